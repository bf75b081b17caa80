"""3D models: Point-MAE (FPS centres, kNN groups, a PointNet per group, Chamfer loss) and NeRF-MAE
(3D patches of RGB + opacity grids, opacity-weighted loss), their exports and loading."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from scimae.core.checkpoint import from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import CoordEmbed, GridTokenizer
from scimae.core.losses import chamfer_distance, grouped_losses
from scimae.core.mae import MAEConfig, MaskedAutoencoder, build_mae
from scimae.core.masking import MaskConfig
from scimae.core.tokens import TokenSet, gather_slots


def has_pytorch3d() -> bool:
    try:
        import pytorch3d.ops  # noqa: F401
    except ImportError:
        return False
    return True


def farthest_point_sample(points: torch.Tensor, k: int, use_pytorch3d: bool | None = None) -> torch.Tensor:
    """Indices [B, k] of ``k`` farthest points of points [B, N, 3], starting from point 0 (pytorch3d's
    ``sample_farthest_points`` where installed; the same rule in torch otherwise)."""
    if use_pytorch3d if use_pytorch3d is not None else has_pytorch3d():
        from pytorch3d.ops import sample_farthest_points

        return sample_farthest_points(points, K=k)[1]
    B, N, _ = points.shape
    idx = points.new_zeros((B, k), dtype=torch.long)
    nearest = points.new_full((B, N), float("inf"))  # squared distance to the chosen set
    last = idx[:, 0]
    rows = torch.arange(B, device=points.device)
    for i in range(1, k):  # a loop over the k centres, vectorised over the batch and the points
        nearest = torch.minimum(nearest, (points - points[rows, last][:, None]).pow(2).sum(-1))
        last = nearest.argmax(1)
        idx[:, i] = last
    return idx


def knn(query: torch.Tensor, points: torch.Tensor, k: int, use_pytorch3d: bool | None = None) -> torch.Tensor:
    """Indices [B, M, k] of the ``k`` nearest points [B, N, 3] of each query [B, M, 3], nearest first
    (pytorch3d's ``knn_points`` where installed; cdist + topk otherwise)."""
    if use_pytorch3d if use_pytorch3d is not None else has_pytorch3d():
        from pytorch3d.ops import knn_points

        return knn_points(query, points, K=k, return_sorted=True).idx
    return torch.cdist(query, points).topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(points: torch.Tensor, n_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points [B, N, 3] -> centres [B, G, 3] (FPS) and neighbourhoods [B, G, k, 3] relative to their centre."""
    with torch.no_grad():
        centre_idx = farthest_point_sample(points, n_groups)  # [B, G]
        centres = points.gather(1, centre_idx[..., None].expand(-1, -1, 3))
        nn_idx = knn(centres, points, group_size)  # [B, G, k]
    B, G, k = nn_idx.shape
    neigh = points.gather(1, nn_idx.reshape(B, G * k, 1).expand(-1, -1, 3)).reshape(B, G, k, 3)
    return centres, neigh - centres[:, :, None]


class PointNetEmbed(nn.Module):
    """Point-MAE's group embedding: a shared point MLP, max-pooled, its global feature joined to every point,
    a second MLP, max-pooled again: [..., k, 3] -> [..., D].

    The second MLP's first layer acts on [point feature, global feature]; its weight is applied as two column
    blocks, so the global half is computed once per group instead of once per point.
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(3, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden))
        self.second = nn.Sequential(nn.Linear(4 * hidden, 4 * hidden), nn.LayerNorm(4 * hidden), nn.GELU(),
                                    nn.Linear(4 * hidden, dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        f = self.first(groups)  # [..., k, 2h]
        # max, not amax: its backward scatters to the arg-max, amax's spreads over ties at twice the cost
        g = f.max(-2, keepdim=True).values  # [..., 1, 2h]
        joint = self.second[0]
        w_point, w_glob = joint.weight.split(f.shape[-1], dim=1)  # [4h, 2h] each
        h = nn.functional.linear(f, w_point, joint.bias) + nn.functional.linear(g, w_glob)  # [..., k, 4h]
        return self.second[1:](h).max(-2).values  # [..., D]


class PointTokenizer(nn.Module):
    """Point-MAE tokens: FPS centres, kNN groups of ``group_size`` points, a PointNet embedding of each
    group plus an MLP embedding of its centre. Input ``points`` [B, N, 3]; the target is each group's
    points relative to its centre [B, G, k * 3]; ``coords`` are the centres (for block masking). One group,
``points``."""

    group_names = ["points"]

    def __init__(self, n_groups: int, group_size: int, dim: int):
        super().__init__()
        self.n_groups, self.group_size, self.dim = n_groups, group_size, dim
        self.embed = PointNetEmbed(dim)
        self.pos_embed = CoordEmbed(3, dim)

    def forward(self, batch: dict) -> TokenSet:
        points = batch["points"]  # [B, N, 3]
        B, N, _ = points.shape
        if N < self.group_size or N < self.n_groups:
            raise ValueError(f"PointTokenizer needs at least {max(self.group_size, self.n_groups)} points, got {N}")
        centres, neigh = group_points(points, self.n_groups, self.group_size)  # [B, G, 3], [B, G, k, 3]
        pos = self.pos_embed(centres)  # [B, G, D]
        G, k = self.n_groups, self.group_size

        def embed(idx: torch.Tensor | None) -> torch.Tensor:
            """PointNet features of the groups at ``idx`` [B, K] (all when None) plus their centre embedding."""
            if idx is None:
                return self.embed(neigh) + pos
            return self.embed(gather_slots(neigh, idx)) + gather_slots(pos, idx)  # [B, K, D]

        return TokenSet(tokens=None, embed_fn=embed, group=torch.zeros(B, G, dtype=torch.long, device=points.device),
                        valid=torch.ones(B, G, dtype=torch.bool, device=points.device), pos=pos,
                        target=neigh.reshape(B, G, k * 3), coords=centres)


class ChamferTarget:
    """Point-MAE's objective: Chamfer-L2 between each hidden group's predicted and true points."""

    def __call__(self, pred: torch.Tensor, ts: TokenSet, idx: torch.Tensor, weight: torch.Tensor,
                 names: Sequence[str]) -> dict:
        B, M, _ = pred.shape
        target = gather_slots(ts.target, idx)  # [B, M, k * 3]
        errors = chamfer_distance(pred.reshape(B * M, -1, 3), target.reshape(B * M, -1, 3)).reshape(B, M)
        return grouped_losses(errors, weight, ts.group.gather(1, idx), names)

    def to_values(self, pred: torch.Tensor, ts: TokenSet, idx: torch.Tensor) -> torch.Tensor:
        return pred


@dataclass
class PointModelConfig(MAEConfig):
    dim: int = 192
    depth: int = 6
    heads: int = 4
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="random", ratio=0.6))


def build_point_mae(cfg: PointModelConfig, n_groups: int, group_size: int) -> MaskedAutoencoder:
    tok = PointTokenizer(n_groups, group_size, cfg.dim)
    return build_mae(cfg, tok, ChamferTarget(), group_size * 3)


def export_config(kind: str, model_cfg, data_cfg, **extra) -> dict:
    """What rebuilds a model and feeds it. ``kind`` point_cloud or point_cloud_classifier: points, groups and
    group size; nerf_grid: grid, patch and the opacity rule. ``model_cfg``: a config or its dict."""
    model = model_cfg if isinstance(model_cfg, dict) else dataclasses.asdict(model_cfg)
    d = data_cfg
    facts = ({"grid": list(d.grid), "patch": d.patch, "opacity": d.opacity, "delta": d.delta} if kind == "nerf_grid"
             else {"n_points": d.n_points, "n_groups": d.n_groups, "group_size": d.group_size})
    return {"domain": "scene3d", "kind": kind, "model": model, **facts, **extra}


def load_point_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    """A pointcloud_pretrain export: the MAE and its config (points, groups, group size)."""
    return from_pretrained(folder, lambda c: build_point_mae(from_dict(PointModelConfig, c["model"], "model."), c["n_groups"],
                                                             c["group_size"]),
                           "scene3d", ("model", "n_groups", "group_size"))


class OpacityWeightedTarget:
    """NeRF-MAE's objective on RGB + opacity patches (values (p..., c), c = R, G, B, opacity): RGB error
    weighted by the true opacity, plus the opacity error, per hidden patch."""

    def __init__(self, opacity_weight: float = 1.0):
        self.opacity_weight = opacity_weight

    def __call__(self, pred: torch.Tensor, ts: TokenSet, idx: torch.Tensor, weight: torch.Tensor,
                 names: Sequence[str]) -> dict:
        B, M, _ = pred.shape
        t = gather_slots(ts.target, idx).reshape(B, M, -1, 4)  # [B, M, p^3, 4]
        p = pred.reshape(B, M, -1, 4)
        alpha = t[..., 3]  # [B, M, p^3]
        w = weight.to(pred.dtype)
        rgb = (alpha[..., None] * (p[..., :3] - t[..., :3]).pow(2)).sum((-1, -2))  # [B, M]
        rgb = (rgb * w).sum() / (3 * (alpha.sum(-1) * w).sum()).clamp_min(1e-8)
        opacity = ((p[..., 3] - alpha).pow(2).mean(-1) * w).sum() / w.sum().clamp_min(1e-8)
        return {"loss": rgb + self.opacity_weight * opacity, "loss/rgb": rgb, "loss/opacity": opacity}

    def to_values(self, pred: torch.Tensor, ts: TokenSet, idx: torch.Tensor) -> torch.Tensor:
        return pred


@dataclass
class NerfModelConfig(MAEConfig):
    dim: int = 192
    depth: int = 4
    heads: int = 4
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    opacity_weight: float = 1.0  # weight of the opacity loss beside the colour loss
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="random", ratio=0.75))


def build_nerf_mae(cfg: NerfModelConfig, grid: tuple[int, int, int], patch: int) -> MaskedAutoencoder:
    """3D patches (``patch`` voxels a side) of a 4-channel grid (RGB, opacity), 3D sin-cos positions."""
    tok = GridTokenizer(["rgba"], tuple(grid), (patch,) * 3, cfg.dim, channels=4)
    return build_mae(cfg, tok, OpacityWeightedTarget(cfg.opacity_weight), tok.patch_values)


def load_nerf_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    """A nerf_pretrain export: the MAE and its config (grid, patch, opacity rule)."""
    return from_pretrained(folder, lambda c: build_nerf_mae(from_dict(NerfModelConfig, c["model"], "model."), tuple(c["grid"]),
                                                            c["patch"]),
                           "scene3d", ("model", "grid", "patch"))
