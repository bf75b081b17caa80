"""Downstream tasks: their losses (classification, multi-label, regression, discrete-time survival) and
the training and evaluation steps the engine calls."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scimae.core.metrics import classification_scores


def classification_step(model: nn.Module, batch, generator=None) -> dict:
    """A training step for single-label classification: cross-entropy against ``batch['y']``."""
    return {"loss": F.cross_entropy(model(batch), batch["y"])}


def classification_evaluate(n_classes: int):
    """An ``evaluate`` hook: accuracy and macro-F1 of ``model(batch)`` against ``batch['y']``."""

    def evaluate(model, batches) -> dict:
        preds, refs = zip(*[(model(batch).argmax(1).cpu(), batch["y"].cpu()) for batch in batches])
        return classification_scores(torch.cat(preds), torch.cat(refs))

    return evaluate


def classification_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool = False,
                        pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (y [B] long) or, multi-label, BCE with ``pos_weight`` (y [B, C] in {0, 1})."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=pos_weight)
    return F.cross_entropy(logits, y.long())


def pos_weight_from_labels(y: torch.Tensor) -> torch.Tensor:
    """negatives / positives per class [C] for y [B, C], for BCE's pos_weight."""
    pos = y.float().sum(0)
    return (y.shape[0] - pos) / pos.clamp_min(1)


def regression_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between pred [B, 1] or [B] and y [B]."""
    return F.smooth_l1_loss(pred.reshape(-1), y.float().reshape(-1))


def survival_loss(logits: torch.Tensor, time_bin: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Discrete-time survival, logistic hazard: logits [B, T] per interval, ``time_bin`` [B] the interval
    of the event or censoring, ``event`` [B] 1 if observed. An event in bin t means hazard 0 before t
    and 1 at t; a censored case contributes hazard 0 up to and including t."""
    T = logits.shape[1]
    t = torch.arange(T, device=logits.device)[None]  # [1, T]
    tb = time_bin.long()[:, None]
    y = ((t == tb) & (event[:, None] > 0)).float()  # [B, T]
    at_risk = (t <= tb).float()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (bce * at_risk).sum() / at_risk.sum().clamp_min(1)


def survival_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score [B] from hazard logits: 1 - S(T), the probability of the event by the last interval."""
    survival = torch.cumprod(1 - torch.sigmoid(logits), dim=1)
    return 1 - survival[:, -1]
