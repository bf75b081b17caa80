"""Teacher-feature targets (MR-MAE, EVA): a frozen scimae export's per-slot features for the student to regress.

With ``model.target=features`` and ``model.teacher=EXPORT`` the decoder predicts, for each hidden slot, the
teacher encoder's output at that slot, standardised per feature over the batch's valid slots. The teacher is an
export of the same domain (a pretraining export, or a converted published checkpoint) whose tokenizer lays out the
same slots. It is loaded at the first batch that needs it, is no part of the student's weights, optimizer or
export, and runs unmasked under ``no_grad`` in eval mode, once per batch.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from scimae.core.checkpoint import describe_export
from scimae.core.errors import DataError
from scimae.core.tokens import TokenSet


def teacher_width(folder: str | Path) -> int:
    """The encoder width of the export at ``folder`` (its config.json), without loading its weights."""
    model = describe_export(folder)["config"].get("model", {})
    width = model.get("dim") if isinstance(model, dict) else None
    if not isinstance(width, int) or width < 1:
        raise DataError(Path(folder) / "config.json", f"model.dim = {width!r}", "the teacher encoder's width")
    return width


def standardise(features: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``features`` [B, N, D] with each feature at zero mean and unit variance over the ``valid`` [B, N] slots."""
    w = valid[..., None].to(features.dtype)  # [B, N, 1]
    count = w.sum((0, 1)).clamp_min(1)
    mean = (features * w).sum((0, 1)) / count  # [D]
    var = ((features - mean).pow(2) * w).sum((0, 1)) / count
    return (features - mean) / (var + eps).sqrt() * w


class TeacherFeatures:
    """The teacher of a student MAE: ``load(folder) -> (MaskedAutoencoder, config)`` is the domain's export loader.

    ``teacher(batch, ts) -> [B, N, D_teacher]``: the teacher encoder's output per slot of the student's TokenSet
    ``ts``, standardised per feature over the student's valid slots (0 elsewhere).
    """

    def __init__(self, folder: str | Path, load: Callable, width: int):
        self.folder, self.load, self.width = str(folder), load, width
        self.encoder: nn.Module | None = None  # loaded on first use; a plain attribute, so not the student's weights

    @torch.no_grad()
    def __call__(self, batch, ts: TokenSet) -> torch.Tensor:
        if self.encoder is None:  # at the first batch, on the device the student trains on
            self.encoder = self.load(self.folder)[0].encoder.eval().requires_grad_(False).to(ts.valid.device)
        tokens = self.encoder(batch)["tokens"]  # [B, N_teacher, D_teacher]
        if tokens.shape[:2] != ts.valid.shape or tokens.shape[-1] != self.width:
            raise DataError(self.folder, f"a teacher of {tokens.shape[1]} slots of width {tokens.shape[-1]}",
                            f"{ts.valid.shape[1]} slots of width {self.width}, as the student's tokenizer lays out "
                            "(an export of the same domain, window and patch)")
        return standardise(tokens.float(), ts.valid)
