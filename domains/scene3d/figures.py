"""3D figures: point clouds and NeRF grids with their reconstructions."""
from __future__ import annotations

import numpy as np
import torch

from scimae.core.mae import MaskedAutoencoder, figure_panels, pyplot, save_panels


@torch.no_grad()
def save_point_figure(model: MaskedAutoencoder, batch: dict, path) -> None:
    """PNG of the first cloud: input (visible grey, hidden red) | reconstruction (visible grey, predicted blue)."""
    plt = pyplot()
    out = model(batch, torch.Generator().manual_seed(0))
    ts, idx, pad = out["tokenset"], out["pred_idx"][0], out["pred_pad"][0]
    centres, mask = ts.coords[0].cpu(), out["plan"].mask[0].cpu()
    groups = (ts.target[0].reshape(len(centres), -1, 3).cpu() + centres[:, None])  # [G, k, 3]
    pred = out["pred"][0][~pad].reshape(-1, ts.target.shape[-1] // 3, 3).cpu() + centres[idx[~pad].cpu()][:, None]
    fig = plt.figure(figsize=(8, 4))
    for i, (title, hidden, colour) in enumerate((("input: visible | hidden", groups[mask], "tab:red"),
                                                 ("reconstruction: visible | predicted", pred, "tab:blue"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        for pts, c in ((groups[~mask], "0.6"), (hidden, colour)):
            pts = pts.reshape(-1, 3).numpy()
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1, c=c)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"Chamfer loss {float(out['loss']):.4f}", fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render(grid: torch.Tensor) -> np.ndarray:
    """Alpha compositing of an RGB + opacity grid [4, W, L, H] seen from above (top H first): an image [W, L, 3]."""
    g = torch.nan_to_num(grid, nan=0.0).clamp(0, 1).flip(-1)
    alpha = g[3]  # [W, L, H]
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    return (trans * alpha * g[:3]).sum(-1).permute(1, 2, 0).clamp(0, 1).numpy()  # [W, L, 3]


@torch.no_grad()
def save_grid_figure(model: MaskedAutoencoder, batch: dict, path) -> None:
    """PNG of the first grid rendered from above: original | masked input | reconstruction."""
    loss, *panels = figure_panels(model, batch)  # [4, W, L, H] each
    save_panels(path, panels, lambda ax, grid: ax.imshow(render(grid), origin="lower"),
                f"loss {loss:.4f} (opacity-composited top view)")
