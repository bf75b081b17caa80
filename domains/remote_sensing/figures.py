"""Remote-sensing figures: false-colour composites of the input, the mask and the reconstruction."""
from __future__ import annotations

import numpy as np
import torch

from scimae.core.mae import MaskedAutoencoder, figure_panels, save_panels


def composite(x: torch.Tensor, names: list[str | None]) -> np.ndarray:
    """[K, h, w] channel slots named by ``names`` (None: unused; NaN = no data) -> an RGB image [h, w, 3]
    stretched to the 2-98 percentiles; no data magenta."""
    named = [i for i, n in enumerate(names) if n is not None]
    idx = [names.index(c) for c in ("R", "G", "B")] if {"R", "G", "B"} <= set(names) else named[:3]
    rgb = x[idx].numpy().transpose(1, 2, 0)
    rgb = np.repeat(rgb, 3 // rgb.shape[2], axis=2) if rgb.shape[2] < 3 else rgb
    finite = np.isfinite(rgb).all(-1)
    if finite.any():
        lo, hi = np.percentile(rgb[finite], [2, 98])
        rgb = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb[~finite] = (1.0, 0.0, 1.0)
    return rgb


@torch.no_grad()
def save_figure(model: MaskedAutoencoder, batch: dict, path, layout: dict[str, list[str]]) -> None:
    """PNG of the first window as a composite: original | masked input | reconstruction."""
    loss, original, masked, recon = figure_panels(model, batch)  # [G * C, h, w] each
    tok = model.encoder.tokenizer
    C = tok.channels
    names = [layout[g][c] if c < len(layout[g]) else None for g in tok.group_names for c in range(C)]
    invalid = ~batch["patch_valid"][0].cpu().repeat_interleave(tok.patch[-2], 1).repeat_interleave(tok.patch[-1], 2)
    original = original.masked_fill(invalid.repeat_interleave(C, 0), float("nan"))
    save_panels(path, (original, masked, recon), lambda ax, img: ax.imshow(composite(img, names)),
                f"loss {loss:.3f} (magenta: no data or hidden)")
