"""Remote-sensing fine-tuning: the fine-tuner (scene classification, segmentation), its training steps
and evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scimae.core.config import check_ranges, one_of
from scimae.core.heads import HEADS, FineTuner
from scimae.core.metrics import classification_scores


IGNORE = 255  # the label of pixels that are not scored (outside the class range, or nodata)


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
        check_ranges("task", self, {"kind": one_of("classification", "segmentation"), "head": HEADS})


class PixelHead(nn.Sequential):
    """Segmentation: the band groups' tokens averaged per patch, then a per-patch linear decoder to pixels."""

    def __init__(self, dim: int, groups: int, grid: tuple[int, int], patch: tuple[int, int], n_out: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, n_out * patch[0] * patch[1]))
        self.groups, self.grid, self.patch, self.n_out = groups, tuple(grid), tuple(patch), n_out

    def forward(self, features: dict, batch: dict) -> torch.Tensor:
        G, (gh, gw), (ph, pw) = self.groups, self.grid, self.patch
        B, _, D = features["tokens"].shape
        t = features["tokens"].reshape(B, G, gh * gw, D)
        w = features["valid"].reshape(B, G, gh * gw, 1).float()
        fused = (t * w).sum(1) / w.sum(1).clamp_min(1)  # [B, n, D] mean over the bands present
        logits = super().forward(fused).reshape(B, gh, gw, ph, pw, self.n_out)
        return logits.permute(0, 5, 1, 3, 2, 4).reshape(B, self.n_out, gh * ph, gw * pw)  # [B, K, H, W]


def geo_finetuner(encoder, task: GeoTaskConfig, n_out: int) -> FineTuner:
    """The core fine-tuner: a pooled head (classification) or the pixel head (segmentation); any band subset
    of the pretrained bands, by name."""
    tok = encoder.tokenizer
    dense = None if task.kind == "classification" else PixelHead(encoder.dim, len(tok.group_names), tok.grid[-2:],
                                                                  tok.patch[-2:], n_out)  # one date
    return FineTuner(encoder, n_out, task.pooler, task.head, task.freeze_encoder, dense)


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
