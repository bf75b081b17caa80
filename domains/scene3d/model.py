"""3D models: Point-MAE (FPS centres, kNN groups, a PointNet per group, Chamfer loss) and NeRF-MAE
(3D patches of RGB + opacity grids, opacity-weighted loss), their exports and loading, and Point-MAE
checkpoints converted into them."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scimae.core.checkpoint import from_pretrained, save_export
from scimae.core.convert import load_mapped, point_mae, read_checkpoint
from scimae.core.errors import DataError
from scimae.core.config import check_ranges, from_dict, one_of
from scimae.core.embed import CoordEmbed, GridTokenizer
from scimae.core.losses import chamfer_distance, grouped_losses
from scimae.core.mae import MAEConfig, MaskedAutoencoder, build_mae
from scimae.core.masking import MaskConfig
from scimae.core.tokens import TokenSet, gather_slots
from scimae.domains.scene3d.transforms import group_points


class BatchNormLast(nn.BatchNorm1d):
    """BatchNorm1d of [..., C] over every leading axis (as Conv1d + BatchNorm1d over groups and points)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


POINTNET_NORMS = {"layernorm": (nn.LayerNorm, nn.GELU), "batchnorm": (BatchNormLast, nn.ReLU)}


class PointNetEmbed(nn.Module):
    """Point-MAE's group embedding: a shared point MLP, max-pooled, its global feature joined to every point,
    a second MLP, max-pooled again: [..., k, 3] -> [..., D]. ``norm`` layernorm: LayerNorm + GELU (scimae's,
    independent of the batch); batchnorm: BatchNorm + ReLU (Point-MAE's).

    The second MLP's first layer acts on [point feature, global feature]; its weight is applied as two column
    blocks, so the global half is computed once per group instead of once per point.
    """

    def __init__(self, dim: int, hidden: int = 128, norm: str = "layernorm"):
        super().__init__()
        Norm, Act = POINTNET_NORMS[norm]
        self.first = nn.Sequential(nn.Linear(3, hidden), Norm(hidden), Act(), nn.Linear(hidden, 2 * hidden))
        self.second = nn.Sequential(nn.Linear(4 * hidden, 4 * hidden), Norm(4 * hidden), Act(), nn.Linear(4 * hidden, dim))

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
``points``. With the batchnorm PointNet every group is embedded (its statistics are over all of them, as in
    Point-MAE); otherwise only the groups the encoder sees."""

    group_names = ["points"]
    coord_dim = 3

    def __init__(self, n_groups: int, group_size: int, dim: int, pointnet: str = "layernorm"):
        super().__init__()
        self.n_groups, self.group_size, self.dim = n_groups, group_size, dim
        self.embed = PointNetEmbed(dim, norm=pointnet)
        self.embed_all = pointnet == "batchnorm"
        self.pos_embed = CoordEmbed(3, dim)

    def forward(self, batch: dict) -> TokenSet:
        points = batch["points"]  # [B, N, 3]
        B, N, _ = points.shape
        if N < self.group_size or N < self.n_groups:
            raise ValueError(f"PointTokenizer needs at least {max(self.group_size, self.n_groups)} points, got {N}")
        given = batch.get("centres")  # [B, G] FPS indices from the data workers, where they compute them
        if given is not None and given.shape != (B, self.n_groups):
            raise ValueError(f"batch 'centres' must be [{B}, {self.n_groups}] point indices, got {tuple(given.shape)}")
        centres, neigh = group_points(points, self.n_groups, self.group_size, given)  # [B, G, 3], [B, G, k, 3]
        pos = self.pos_embed(centres)  # [B, G, D]
        G, k = self.n_groups, self.group_size

        def embed(idx: torch.Tensor | None) -> torch.Tensor:
            """PointNet features of the groups at ``idx`` [B, K] (all when None) plus their centre embedding."""
            if idx is None:
                return self.embed(neigh) + pos
            if self.embed_all:
                return gather_slots(self.embed(neigh), idx) + gather_slots(pos, idx)
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
    pointnet: str = "layernorm"  # the group embedding's norm: layernorm (+ GELU) or batchnorm (+ ReLU, Point-MAE's)
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="random", ratio=0.6))

    def __post_init__(self):
        super().__post_init__()
        check_ranges("model", self, {"pointnet": one_of(*POINTNET_NORMS)})


def build_point_mae(cfg: PointModelConfig, n_groups: int, group_size: int) -> MaskedAutoencoder:
    tok = PointTokenizer(n_groups, group_size, cfg.dim, cfg.pointnet)
    return build_mae(cfg, tok, ChamferTarget(), group_size * 3, load_point_mae)


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


def convert_point_mae(checkpoint, out, heads: int | None = None, decoder_heads: int | None = None,
                      n_groups: int = 64, n_points: int = 1024) -> Path:
    """A Point-MAE pretraining checkpoint -> a pointcloud_pretrain export with Point-MAE's conventions as model
    options (:func:`scimae.core.convert.point_mae`). ``n_groups`` and ``n_points`` are not in the tensors; the
    defaults are Point-MAE's pretraining recipe (64 groups of 1,024 points). Writes ``out`` (which must not exist
    yet) and returns it."""
    from scimae.domains.scene3d.data import PointDataConfig

    out = Path(out)
    if out.exists():
        raise DataError(out, "an existing path", "a new folder for the converted export (nothing is overwritten)")
    model, facts, tensors, left_out = point_mae(read_checkpoint(checkpoint), checkpoint, heads, decoder_heads)
    cfg = from_dict(PointModelConfig, {**model, "mask": {"strategy": "random", "ratio": 0.6, "count": "hide_floor"}}, "model.")
    data = PointDataConfig(n_points=n_points, n_groups=n_groups, group_size=facts["group_size"])
    mae = build_point_mae(cfg, n_groups, facts["group_size"])
    fresh = load_mapped(mae, tensors)  # the cls slot: no slot attends to it
    source = {"format": "pointmae", "file": Path(checkpoint).name, "left_out": left_out, "fresh": fresh,
              "conventions": "Point-MAE: clouds centred and scaled to the unit sphere; FPS centres from point 0 and kNN "
                             "groups; PointNet with BatchNorm + ReLU; positions (an MLP of the centres, another in the "
                             "decoder) added before every block; no qkv bias; no cls token; n - int(ratio x n) visible "
                             "groups; Chamfer-L2 loss"}
    return save_export(out, mae, export_config("point_cloud", cfg, data, source=source))


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
    return build_mae(cfg, tok, OpacityWeightedTarget(cfg.opacity_weight), tok.patch_values, load_nerf_mae)


def load_nerf_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    """A nerf_pretrain export: the MAE and its config (grid, patch, opacity rule)."""
    return from_pretrained(folder, lambda c: build_nerf_mae(from_dict(NerfModelConfig, c["model"], "model."), tuple(c["grid"]),
                                                            c["patch"]),
                           "scene3d", ("model", "grid", "patch"))
