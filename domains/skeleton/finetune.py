"""Skeleton fine-tuning: the action classifier (a linear probe or a full fine-tune)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scimae.core.checkpoint import from_pretrained
from scimae.core.heads import FineTuner
from scimae.domains.skeleton.model import EXPORT_KEYS, mae_from_config


@dataclass
class SkeletonTaskConfig:
    linear_probe: bool = False  # freeze the encoder and train a linear head
    labels_per_class: int | None = None  # train on only this many sequences per action (label efficiency)


def skeleton_classifier(encoder: nn.Module, n_classes: int, linear_probe: bool = False) -> FineTuner:
    """Encoder + mean pooling over the present bodies' tokens + a linear probe (frozen encoder) or an MLP."""
    return FineTuner(encoder, n_classes, "mean", "linear" if linear_probe else "mlp", linear_probe)


def load_finetuned(folder) -> tuple[FineTuner, dict]:
    """An export of skeleton_finetune: the action classifier (in evaluation mode) and its config."""

    def build(c: dict) -> FineTuner:
        return skeleton_classifier(mae_from_config(c).encoder, len(c["actions"]), c["task"]["linear_probe"])

    model, config = from_pretrained(folder, build, "skeleton", EXPORT_KEYS + ("actions", "task"))
    return model.eval(), config
