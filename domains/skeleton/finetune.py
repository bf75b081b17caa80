"""Skeleton fine-tuning: the action classifier (a linear probe or a full fine-tune)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from scimae.core.heads import FineTuner


@dataclass
class SkeletonTaskConfig:
    linear_probe: bool = False  # freeze the encoder and train a linear head
    labels_per_class: int | None = None  # train on only this many sequences per action (label efficiency)


def skeleton_classifier(encoder: nn.Module, n_classes: int, linear_probe: bool = False) -> FineTuner:
    """Encoder + mean pooling over the present bodies' tokens + a linear probe (frozen encoder) or an MLP."""
    return FineTuner(encoder, n_classes, "mean", "linear" if linear_probe else "mlp", linear_probe)
