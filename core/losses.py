"""Reconstruction losses, reduced only over hidden-and-valid slots."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from scimae.core.tokens import gather_slots


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``values`` [B, M]; 0 (not NaN) when the weights sum to 0."""
    return (values * weight).sum() / weight.sum().clamp_min(1e-8)


def patch_stats(target: torch.Tensor, mask: torch.Tensor | None = None,
                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [..., 1] of each patch [..., P] over its used values (``mask`` [..., P], all if None); the
    variance is the unbiased (n - 1) one, as MAE's norm-pix target computes it."""
    if mask is None:
        return target.mean(-1, keepdim=True), (target.var(-1, keepdim=True, unbiased=True) + eps).sqrt()
    m = mask.to(target.dtype)
    count = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (target * m).sum(-1, keepdim=True) / count
    var = ((target - mean).pow(2) * m).sum(-1, keepdim=True) / (count - 1).clamp_min(1)
    return mean, (var + eps).sqrt()


def normalize_patches(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MAE's norm-pix target: each patch [..., P] to zero mean and unit variance (over its used values)."""
    mean, std = patch_stats(target, mask)
    return (target - mean) / std


_ELEMENTWISE = {"mse": F.mse_loss, "l1": F.l1_loss}


def patch_errors(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", norm_pix: bool = False,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slot error [B, M] between pred and target [B, M, P], averaged over the used values (``mask``)."""
    if norm_pix:
        target = normalize_patches(target, mask)
    if kind not in _ELEMENTWISE:
        raise ValueError(f"loss kind must be 'mse' or 'l1', got {kind!r}")
    return mean_over_used(_ELEMENTWISE[kind](pred, target, reduction="none"), mask)  # one fused kernel each way


def mean_over_used(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean [...] of ``values`` [..., P] over the used ones (``mask`` [..., P]; all of them if None)."""
    if mask is None:
        return values.mean(-1)
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1)


def grouped_losses(errors: torch.Tensor, weight: torch.Tensor, group: torch.Tensor,
                   names: Sequence[str]) -> dict[str, torch.Tensor]:
    """{'loss': mean over weighted slots, 'loss/<name>': the same per group (0 for an empty group),
    'slots/<name>': the weight behind it, so that means over batches can weigh each group by it, and 'errors':
    the per-slot ``errors`` [B, M] themselves}."""
    w = weight.to(errors.dtype)
    sums = errors.new_zeros(len(names)).scatter_add_(0, group.reshape(-1), (errors * w).reshape(-1))
    counts = errors.new_zeros(len(names)).scatter_add_(0, group.reshape(-1), w.reshape(-1))
    out = {"loss": masked_mean(errors, w), "errors": errors}
    per = sums / counts.clamp_min(1e-8)
    for i, name in enumerate(names):
        out[f"loss/{name}"] = per[i]
        out[f"slots/{name}"] = counts[i]
    return out


def ranking_loss(scores: torch.Tensor, errors: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """HPM's relative loss: for every pair of weighted slots (i, j) of a sample whose ``errors`` [B, M] differ, the
    binary cross-entropy of sigmoid(score_i - score_j) against errors_i > errors_j, averaged over those pairs;
    ``scores`` [B, M] learn to rank the slots by error."""
    diff = scores[:, :, None] - scores[:, None, :]  # [B, M, M]
    above = errors[:, :, None] > errors[:, None, :]
    w = weight[:, :, None] * weight[:, None, :] * (errors[:, :, None] != errors[:, None, :])  # [B, M, M]
    bce = F.binary_cross_entropy_with_logits(diff, above.to(diff.dtype), reduction="none")
    return masked_mean(bce, w.to(diff.dtype))


def gaussian_nll(logvar: torch.Tensor, error: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slot Gaussian negative log-likelihood [B, M] (constant dropped) of ``error`` [B, M, P] under a zero-mean
    normal of log-variance ``logvar`` [B, M, P], averaged over the used values (``mask`` [B, M, P], all if None)."""
    return mean_over_used(0.5 * (logvar + error.pow(2) * torch.exp(-logvar)), mask)


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

    The tokenizer puts the raw patch values in ``TokenSet.target`` [B, N, P]; a per-group
    ``TokenSet.value_mask`` [G, P] marks the values that exist (groups with fewer channels).
    """

    def __init__(self, kind: str = "mse", norm_pix: bool = True):
        patch_errors(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), kind)  # validates kind
        self.kind, self.norm_pix = kind, norm_pix

    def __call__(self, pred: torch.Tensor, ts, idx: torch.Tensor, weight: torch.Tensor,
                 names: Sequence[str]) -> dict[str, torch.Tensor]:
        """pred [B, M, P] for slots ``idx`` [B, M]; ``weight`` [B, M] is 0 on padding entries; ``names``: the
        tokenizer's group names."""
        target = gather_slots(ts.target, idx)  # [B, M, P]
        group = ts.group.gather(1, idx)  # [B, M]
        errors = patch_errors(pred, target, self.kind, self.norm_pix, self.used_values(ts, group))
        return grouped_losses(errors, weight, group, names)

    @staticmethod
    def used_values(ts, group: torch.Tensor) -> torch.Tensor | None:
        """The values [B, M, P] that exist in slots of ``group`` [B, M] (None: all of them)."""
        mask = ts.value_mask  # [G, P]
        return None if mask is None else mask[group]  # [B, M, P]

    def to_values(self, pred: torch.Tensor, ts, idx: torch.Tensor) -> torch.Tensor:
        """Prediction back in the target's units (undoes norm-pix with the true patch statistics)."""
        if not self.norm_pix:
            return pred
        target = gather_slots(ts.target, idx)
        mean, std = patch_stats(target, self.used_values(ts, ts.group.gather(1, idx)))
        return pred * std + mean
