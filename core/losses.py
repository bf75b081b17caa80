"""Reconstruction losses, reduced only over hidden-and-valid slots."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``values`` [B, M]; 0 (not NaN) when the weights sum to 0."""
    return (values * weight).sum() / weight.sum().clamp_min(1e-8)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm-pix target: each patch [..., P] to zero mean and unit variance."""
    mean = target.mean(-1, keepdim=True)
    var = target.var(-1, keepdim=True, unbiased=False)
    return (target - mean) / (var + eps).sqrt()


def patch_errors(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", norm_pix: bool = False) -> torch.Tensor:
    """Per-slot error [B, M] between pred and target [B, M, P]."""
    if norm_pix:
        target = normalize_patches(target)
    diff = pred - target
    if kind == "mse":
        return diff.pow(2).mean(-1)
    if kind == "l1":
        return diff.abs().mean(-1)
    raise ValueError(f"loss kind must be 'mse' or 'l1', got {kind!r}")


def grouped_losses(errors: torch.Tensor, weight: torch.Tensor, group: torch.Tensor,
                   names: Sequence[str]) -> dict[str, torch.Tensor]:
    """{'loss': mean over weighted slots, 'loss/<name>': the same per group} (0 for an empty group)."""
    w = weight.to(errors.dtype)
    sums = errors.new_zeros(len(names)).scatter_add_(0, group.reshape(-1), (errors * w).reshape(-1))
    counts = errors.new_zeros(len(names)).scatter_add_(0, group.reshape(-1), w.reshape(-1))
    out = {"loss": masked_mean(errors, w)}
    per = sums / counts.clamp_min(1e-8)
    for i, name in enumerate(names):
        out[f"loss/{name}"] = per[i]
    return out


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w * (pred - target)^2) / sum(w), with ``weight`` broadcast to pred's shape."""
    w = weight.expand_as(pred).to(pred.dtype)
    return ((pred - target).pow(2) * w).sum() / w.sum().clamp_min(1e-8)


def chamfer_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared-distance Chamfer per cloud [B] for x [B, N, C], y [B, M, C] (pytorch3d's definition)."""
    d = torch.cdist(x, y).pow(2)  # [B, N, M]
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def chamfer_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Chamfer distance per cloud [B]: pytorch3d's kernel when it imports, else :func:`chamfer_torch`."""
    try:
        from pytorch3d.loss import chamfer_distance as p3d_chamfer
    except ImportError:
        return chamfer_torch(x, y)
    return p3d_chamfer(x.float(), y.float(), batch_reduction=None)[0]


class PatchTarget:
    """Pixel/voxel/sample reconstruction target: MSE or L1, optional norm-pix, per-group losses.

    The tokenizer puts the raw patch values in ``TokenSet.target`` [B, N, P].
    """

    def __init__(self, names: Sequence[str], kind: str = "mse", norm_pix: bool = True):
        patch_errors(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), kind)  # validates kind
        self.names, self.kind, self.norm_pix = list(names), kind, norm_pix

    def __call__(self, pred: torch.Tensor, ts, idx: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred [B, M, P] for slots ``idx`` [B, M]; ``weight`` [B, M] is 0 on padding entries."""
        target = ts.target.gather(1, idx[..., None].expand(-1, -1, ts.target.shape[-1]))  # [B, M, P]
        errors = patch_errors(pred, target, self.kind, self.norm_pix)
        return grouped_losses(errors, weight, ts.group.gather(1, idx), self.names)

    def to_values(self, pred: torch.Tensor, ts, idx: torch.Tensor) -> torch.Tensor:
        """Prediction back in the target's units (undoes norm-pix with the true patch statistics)."""
        if not self.norm_pix:
            return pred
        target = ts.target.gather(1, idx[..., None].expand(-1, -1, ts.target.shape[-1]))
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        return pred * std + mean
