"""Cardiac fine-tuning: the fine-tuner (diagnosis, classification, regression), its training steps and
evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from scimae.core.config import check_ranges, one_of
from scimae.core.heads import HEADS, FineTuner
from scimae.core.mae import MAEEncoder


@dataclass
class CardiacTaskConfig:
    kind: str = "diagnosis"  # diagnosis (multi-label), classification (one class per record) or regression
    target: str = "hr"  # regression target (a header comment key)
    label: str = "morphology"  # classification: the header comment key that names the class
    labels_per_class: int | None = None  # classification: train on the first this many windows of each class
    head: str = "mlp"  # mlp, or linear (with freeze_encoder: a linear probe)
    pooler: str = "mean"  # cls, mean or attention
    freeze_encoder: bool = False  # train the head only (a probe of frozen features)
    by_channels: bool = True  # after training, also score each channel configuration (12-lead, lead I, ...)

    def __post_init__(self):
        check_ranges("task", self, {"kind": one_of("diagnosis", "classification", "regression"), "head": HEADS})


def cardiac_finetuner(encoder: MAEEncoder, task: CardiacTaskConfig, n_out: int) -> FineTuner:
    """The core fine-tuner on the pretrained encoder; the same weights take any channel subset."""
    return FineTuner(encoder, n_out, task.pooler, task.head, task.freeze_encoder)


def task_step(task: CardiacTaskConfig, pos_weight: torch.Tensor | None = None, hr_scale: float = 1.0):
    from scimae.core.tasks import classification_loss, regression_loss

    def step(model, batch, generator):
        out = model(batch)
        if task.kind == "classification":
            return {"loss": classification_loss(out, batch["y"])}
        if task.kind == "diagnosis":
            pw = pos_weight.to(out.device) if pos_weight is not None else None
            return {"loss": classification_loss(out, batch["y"], multilabel=True, pos_weight=pw)}
        return {"loss": regression_loss(out, batch["hr"] / hr_scale)}

    return step


@torch.no_grad()
def task_evaluate(task: CardiacTaskConfig, diagnoses: list[str], hr_scale: float = 1.0):
    """Macro AUROC over the diagnoses present in both classes, accuracy and macro-F1 of the classes, or mean
    absolute error in the target's units."""
    from scimae.core.metrics import auroc, classification_scores

    def evaluate(model, batches) -> dict:
        outs, ys, hrs = [], [], []
        for batch in batches:
            outs.append(model(batch).float().cpu())
            ys.append(batch["y"].cpu())
            hrs.append(batch["hr"].cpu())
        out, y, hr = torch.cat(outs), torch.cat(ys), torch.cat(hrs)
        if task.kind == "classification":
            return classification_scores(out.argmax(1), y)
        if task.kind == "regression":
            return {"mae": float((out.reshape(-1) * hr_scale - hr).abs().mean())}
        both = [i for i in range(y.shape[1]) if 0 < y[:, i].sum() < len(y)]
        if not both:
            return {"macro_auroc": float("nan")}
        scores = {f"auroc_{diagnoses[i]}": auroc(out[:, i], y[:, i]) for i in both}
        return {"macro_auroc": sum(scores.values()) / len(scores), **scores}

    return evaluate
