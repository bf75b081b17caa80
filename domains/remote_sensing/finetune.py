"""Remote-sensing fine-tuning: the fine-tuner (scene classification, segmentation), its training steps
and evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scimae.core.checkpoint import Exportable
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
