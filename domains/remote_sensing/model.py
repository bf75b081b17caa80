"""Remote-sensing models: band-group tokenizer, the MAE, exports and the composite figure."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from scimae.core.checkpoint import Exportable, from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae, figure_panels, pyplot
from scimae.core.masking import MaskConfig
from scimae.core.metrics import classification_scores
from scimae.domains.remote_sensing.data import band_layout

IGNORE = 255  # the label of pixels that are not scored (outside the class range, or nodata)


@dataclass
class GeoModelConfig(SmallMAEConfig):
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="group_independent", ratio=0.75))


def build_geo_mae(cfg: GeoModelConfig, layout: dict[str, list[str]], window: int, patch: int) -> MaskedAutoencoder:
    """One token group per spectral group of ``layout`` (group -> bands; 2D patches, a group embedding,
    2D sin-cos positions): any band subset by name."""
    groups, sizes = list(layout), [len(m) for m in layout.values()]
    tok = GridTokenizer(groups, (window, window), (patch, patch), cfg.dim, max(sizes), sizes)
    return build_mae(cfg, tok, groups, PatchTarget(groups, cfg.loss, cfg.norm_pix), tok.patch_values)


def export_config(model_cfg: GeoModelConfig, data_cfg, **extra) -> dict:
    """The band table (names, kinds, normalisation), spectral groups, window and patch size of a model."""
    layout = band_layout([b.name for b in data_cfg.bands], data_cfg.groups)
    return {"domain": "remote_sensing", "model": dataclasses.asdict(model_cfg),
            "bands": [dataclasses.asdict(b) for b in data_cfg.bands], "groups": layout_record(layout),
            "window": data_cfg.window, "patch": data_cfg.patch, **extra}


EXPORT_KEYS = ("model", "groups", "window", "patch")  # what a loader reads


def mae_from_config(config: dict) -> MaskedAutoencoder:
    return build_geo_mae(from_dict(GeoModelConfig, config["model"], "model."), export_layout(config), config["window"],
                         config["patch"])


def load_geo_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    return from_pretrained(folder, mae_from_config, "remote_sensing", EXPORT_KEYS)


def layout_record(layout: dict[str, list[str]]) -> list[dict]:
    """The band layout as an ordered JSON list (exports sort mapping keys; group order is the model's)."""
    return [{"name": g, "bands": members} for g, members in layout.items()]


def export_layout(config: dict) -> dict[str, list[str]]:
    return {g["name"]: g["bands"] for g in config["groups"]}


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
    plt = pyplot()
    loss, original, masked, recon = figure_panels(model, batch)  # [G * C, h, w] each
    tok = model.encoder.tokenizer
    C = tok.channels
    names = [layout[g][c] if c < len(layout[g]) else None for g in tok.groups for c in range(C)]
    invalid = ~batch["patch_valid"][0].cpu().repeat_interleave(tok.patch[0], 1).repeat_interleave(tok.patch[1], 2)
    original = original.masked_fill(invalid.repeat_interleave(C, 0), float("nan"))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, title, img in zip(axes, ("original", "masked", "reconstruction"), (original, masked, recon)):
        ax.imshow(composite(img, names))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"loss {loss:.3f} (magenta: no data or hidden)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass
class GeoTaskConfig:
    kind: str = "classification"  # classification (class subfolders) or segmentation (label rasters)
    labels: str | None = None  # segmentation: the folder of label rasters (default: <data>/../labels)
    classes: int = 5  # segmentation: number of classes (labels >= this are ignored)
    labels_per_class: int | None = None  # classification: train on only this many tiles per class (label efficiency)
    head: str = "mlp"  # mlp or linear
    pooler: str = "mean"  # cls, mean or attention
    freeze_encoder: bool = False  # train the head only (a probe of frozen features)

    def __post_init__(self):
        if self.kind not in ("classification", "segmentation"):
            raise ValueError(f"task.kind must be classification or segmentation, got {self.kind!r}")


class GeoFineTuner(Exportable, nn.Module):
    """Encoder + pooled head (classification) or a per-patch linear decoder to pixels (segmentation);
    any band subset of the pretrained bands, by name."""

    def __init__(self, encoder, task: GeoTaskConfig, n_out: int):
        from scimae.core.heads import LinearProbe, MLPHead, Pooler

        super().__init__()
        self.encoder, self.task, self.n_out = encoder, task, n_out
        D = encoder.dim
        if task.kind == "classification":
            self.pool = Pooler(D, task.pooler)
            self.head = LinearProbe(D, n_out) if task.head == "linear" else MLPHead(D, n_out)
        else:
            p = encoder.tokenizer.patch
            self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, n_out * p[0] * p[1]))
        if task.freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, batch: dict) -> torch.Tensor:
        feats = self.encoder(batch)
        if self.task.kind == "classification":
            return self.head(self.pool(feats))  # [B, K]
        tok = self.encoder.tokenizer
        G, (gh, gw), (ph, pw) = len(tok.groups), tok.grid, tok.patch
        B, _, D = feats["tokens"].shape
        t = feats["tokens"].reshape(B, G, gh * gw, D)
        w = feats["valid"].reshape(B, G, gh * gw, 1).float()
        fused = (t * w).sum(1) / w.sum(1).clamp_min(1)  # [B, n, D] mean over the bands present
        logits = self.head(fused).reshape(B, gh, gw, ph, pw, self.n_out)
        return logits.permute(0, 5, 1, 3, 2, 4).reshape(B, self.n_out, gh * ph, gw * pw)  # [B, K, H, W]


def task_step(task: GeoTaskConfig):
    import torch.nn.functional as F

    def step(model, batch, generator):
        out = model(batch)
        if task.kind == "classification":
            return {"loss": F.cross_entropy(out, batch["y"])}
        seg = batch["seg"].masked_fill(batch["seg"] >= out.shape[1], IGNORE)
        return {"loss": F.cross_entropy(out, seg, ignore_index=IGNORE)}

    return step


def task_evaluate(task: GeoTaskConfig, n_out: int):
    """Accuracy and macro-F1 (classification, per tile; segmentation, per pixel) and mIoU (segmentation)."""

    def evaluate(model, batches) -> dict:
        preds, refs = [], []
        for batch in batches:
            ref = batch["y"] if task.kind == "classification" else batch["seg"]
            preds.append(model(batch).argmax(1).cpu())
            refs.append(ref.cpu().masked_fill(ref.cpu() >= n_out, IGNORE))
        return classification_scores(torch.cat(preds), torch.cat(refs), IGNORE, iou=task.kind == "segmentation")

    return evaluate
