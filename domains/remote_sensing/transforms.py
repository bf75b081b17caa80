"""Per-window features of a remote-sensing sample that need no model."""
from __future__ import annotations

import torch


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
