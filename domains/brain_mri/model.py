"""Brain MRI models: the modality tokenizer, the MAE, its export config and loading."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from scimae.core.checkpoint import from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MAEConfig, MaskedAutoencoder, build_mae
from scimae.core.masking import MaskConfig
from scimae.domains.brain_mri.io import MODALITIES


@dataclass
class BrainModelConfig(MAEConfig):
    patch: int = 16  # patch edge in voxels (one token per patch and modality)
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="group_dirichlet", ratio=0.75, alpha=1.0))


class BrainTokenizer(GridTokenizer):
    """One 3D patch projection per modality, 3D sin-cos positions and a modality embedding.

    Batch: ``image`` [B, 4, X, Y, Z] in MODALITIES order and ``present`` [B, 4]; a missing modality is
    invalid slots, never zeros shown to the encoder.
    """

    def __init__(self, roi, patch: int, dim: int):
        super().__init__(MODALITIES, roi, (patch,) * 3, dim)

    def forward(self, batch: dict):
        return super().forward({"image": batch["image"][:, :, None], "present": batch["present"]})

    def example_inputs(self, batch: int = 2) -> dict[str, torch.Tensor]:
        """A batch of this layout for tracing: image [B, 4, X, Y, Z], present [B, 4] (one modality absent)."""
        present = torch.ones(batch, len(self.group_names), dtype=torch.bool)
        present[:, -1] = False
        return {"image": torch.randn(batch, len(self.group_names), *self.spatial), "present": present}


def build_brain_mae(cfg: BrainModelConfig, roi) -> MaskedAutoencoder:
    tok = BrainTokenizer(roi, cfg.patch, cfg.dim)
    return build_mae(cfg, tok, PatchTarget(cfg.loss, cfg.norm_pix), tok.patch_values, load_brain_mae)


def export_config(model_cfg: BrainModelConfig, roi, spacing, **extra) -> dict:
    """What a user needs to use the weights without guessing: modality order, grid, normalisation."""
    return {"domain": "brain_mri", "model": dataclasses.asdict(model_cfg), "modalities": list(MODALITIES),
            "roi": list(roi), "spacing": list(spacing) if spacing else None, "patch_size": [model_cfg.patch] * 3,
            "orientation": "RAS", "normalization": "z-score over non-zero voxels, per modality", **extra}


def load_brain_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    """``(mae, config)`` from an export of brats_pretrain (ready to continue pretraining or reconstruct)."""
    return from_pretrained(folder, lambda c: build_brain_mae(from_dict(BrainModelConfig, c["model"], "model."), c["roi"]),
                           "brain_mri", ("model", "roi"))
