"""Cardiac figures: the reconstruction of each channel."""
from __future__ import annotations

import torch

from scimae.core.mae import MaskedAutoencoder, figure_panels, pyplot
from scimae.domains.cardiac.io import CHANNELS


@torch.no_grad()
def save_figure(model: MaskedAutoencoder, batch: dict, path) -> None:
    """PNG of the first window: per present channel, the signal, the masked input and the reconstruction."""
    plt = pyplot()
    loss, orig, masked, recon = figure_panels(model, batch)  # [13, L] each
    rows = [i for i, ch in enumerate(CHANNELS) if bool(batch["present"][0, i])]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.1 * len(rows) + 0.6), squeeze=False, sharex=True)
    for ax, i in zip(axes[:, 0], rows):
        ax.plot(orig[i], color="0.75", lw=0.8, label="signal")
        ax.plot(masked[i], color="k", lw=0.8, label="masked input")
        ax.plot(torch.where(torch.isnan(masked[i]), recon[i], torch.nan), color="tab:red", lw=0.8,
                label="reconstruction")
        ax.set_ylabel(CHANNELS[i], rotation=0, ha="right", fontsize=8)
        ax.set_yticks([])
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(f"loss {loss:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
