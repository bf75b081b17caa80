"""Brain MRI figures: the reconstruction of each modality."""
from __future__ import annotations

import torch

from scimae.core.mae import MaskedAutoencoder, figure_panels, pyplot
from scimae.domains.brain_mri.io import MODALITIES


@torch.no_grad()
def save_figure(model: MaskedAutoencoder, batch: dict, path) -> None:
    """PNG of the first case's mid axial slice per modality: original | masked input | reconstruction."""
    plt = pyplot()
    loss, *panels = figure_panels(model, batch)  # 3 x [4, X, Y, Z]
    z = panels[0].shape[-1] // 2
    fig, axes = plt.subplots(len(MODALITIES), 3, figsize=(7.5, 2.5 * len(MODALITIES)), squeeze=False)
    for row, mod in enumerate(MODALITIES):
        present = bool(batch["present"][0, row])
        for col, (title, vol) in enumerate(zip(("original", "masked", "reconstruction"), panels)):
            ax = axes[row, col]
            ax.imshow(torch.nan_to_num(vol[row, :, :, z], nan=-3).T.numpy(), cmap="gray", origin="lower", vmin=-3, vmax=3)
            ax.set_axis_off()
            ax.set_title(f"{mod}: {title}" if present else f"{mod}: missing", fontsize=8)
    fig.suptitle(f"{batch['case_id'][0]}  loss {loss:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
