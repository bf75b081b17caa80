"""Remote-sensing preprocessing of a window (standardised bands, patch validity, georeference) and the
features of a sample that need no model."""
from __future__ import annotations

import numpy as np
import torch


def window_transform(scene, row: int, col: int) -> torch.Tensor:
    """The georeference (a, b, c, d, e, f) of the scene's window whose top-left pixel is (row, col), as a tensor
    [6]; zeros for a scene without an affine (rasterio's ``Affine``)."""
    from affine import Affine

    t = getattr(scene, "transform", None)
    if not isinstance(t, Affine):
        return torch.zeros(6, dtype=torch.float64)
    a, b, c, d, e, f = tuple(t)[:6]
    return torch.tensor((a, b, c + a * col + b * row, d, e, f + d * col + e * row), dtype=torch.float64)


def window_bounds(row: int, col: int, size: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The part (r0, c0, r1, c1) of the size x size window at (row, col) inside a height x width scene; empty
    (r1 <= r0 or c1 <= c0) when the window lies outside it."""
    return max(row, 0), max(col, 0), min(row + size, height), min(col + size, width)


def to_sample(x: np.ndarray, valid: np.ndarray, mean, std, patch: int, min_valid: float) -> dict[str, torch.Tensor]:
    """Bands [Nb, h, w] and validity -> per-band image [Nb, 1, h, w] and patch_valid [Nb, h/p, w/p]."""
    nb, h, w = x.shape
    image = np.where(valid, (x - mean) / std, 0.0).astype(np.float32)
    patch_valid = valid.reshape(nb, h // patch, patch, w // patch, patch).mean((2, 4)) >= min_valid
    return {"image": torch.from_numpy(image)[:, None], "patch_valid": torch.from_numpy(patch_valid)}


def summary_statistics(image: torch.Tensor, patch_valid: torch.Tensor) -> torch.Tensor:
    """The evaluation's ``simple`` baseline: per band slot, the mean, std and 10/50/90th percentiles of the
    valid pixels (the spectra a per-pixel or band-mean classifier sees). image [B, G, C, h, w] (normalised),
    patch_valid [B, G, h/p, w/p] -> [B, G * C * 5]."""
    B, G, C, h, w = image.shape
    p = h // patch_valid.shape[-2]
    valid = patch_valid.repeat_interleave(p, -2).repeat_interleave(p, -1)[:, :, None]  # [B, G, 1, h, w]
    x = image.masked_fill(~valid, float("nan")).flatten(3)  # [B, G, C, h * w]
    q = torch.nanquantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=x.dtype), dim=-1)  # [3, B, G, C]
    mean = torch.nanmean(x, -1)
    std = torch.nanmean((x - mean[..., None]) ** 2, -1).sqrt()
    return torch.nan_to_num(torch.stack([mean, std, *q], -1)).flatten(1)  # [B, G * C * 5]
