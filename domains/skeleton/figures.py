"""Skeleton figures: the body over a few frames, input, mask and reconstruction."""
from __future__ import annotations

import numpy as np
import torch

from scimae.core.mae import MaskedAutoencoder, pyplot
from scimae.domains.skeleton.transforms import BONES


@torch.no_grad()
def save_figure(model: MaskedAutoencoder, batch: dict, path, n_frames: int = 4) -> None:
    """PNG of the first sequence's first body at a few frames (x-y view): original | masked | reconstruction."""
    plt = pyplot()
    out = model(batch, torch.Generator().manual_seed(0))
    tok = model.encoder.tokenizer
    panels = [tok.unpatch(v[:1])[0, 0].cpu().numpy() for v in model.reconstruction(out)]  # [T, V, 3] each
    frames = np.linspace(0, tok.frames - 1, n_frames).astype(int)
    fig, axes = plt.subplots(3, n_frames, figsize=(2.2 * n_frames, 6.6))
    for row, (title, xyz) in enumerate(zip(("original", "masked", "reconstruction"), panels)):
        for col, t in enumerate(frames):
            ax = axes[row, col]
            for a, b in BONES:
                if np.isfinite(xyz[t, [a, b]]).all():
                    ax.plot(xyz[t, [a, b], 0], xyz[t, [a, b], 1], "-", color="tab:blue", lw=1.5)
            ok = np.isfinite(xyz[t, :, 0])
            ax.plot(xyz[t, ok, 0], xyz[t, ok, 1], "o", color="tab:red" if row == 2 else "k", ms=2)
            ax.set_aspect("equal")
            ax.set_axis_off()
            ax.set_title(f"{title}, frame {t}", fontsize=7)
    fig.suptitle(f"loss {float(out['loss']):.4f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
