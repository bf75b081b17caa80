"""3D fine-tuning: the point-cloud classifier, pooled features and the SVM probe, the NeRF voxel head."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from scimae.core.checkpoint import from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import unpatchify
from scimae.core.heads import FineTuner, Pooler
from scimae.domains.scene3d.model import PointModelConfig, build_point_mae


@dataclass
class PointTaskConfig:
    svm_c: float = 0.01  # the linear SVM's regularisation
    freeze_encoder: bool = False  # train the head only
    labels_per_class: int | None = None  # train on only this many clouds per class (label efficiency)


def point_classifier(encoder: nn.Module, n_classes: int, freeze_encoder: bool = False) -> FineTuner:
    """Encoder + max-and-mean pooling (Point-MAE) + MLP head for shape classification."""
    return FineTuner(encoder, n_classes, "max_mean", "mlp", freeze_encoder)


def load_point_classifier(folder) -> tuple[FineTuner, dict]:
    """An export of pointcloud_finetune: the shape classifier (in evaluation mode) and its config."""

    def build(c: dict) -> FineTuner:
        mae = build_point_mae(from_dict(PointModelConfig, c["model"], "model."), c["n_groups"], c["group_size"])
        return point_classifier(mae.encoder, len(c["classes"]))

    model, config = from_pretrained(folder, build, "scene3d", ("model", "n_groups", "group_size", "classes"))
    return model.eval(), config


@torch.no_grad()
def pooled_features(encoder: nn.Module, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Max-and-mean pooled encoder features [S, 2D] and labels [S] of a dataset, on the encoder's device."""
    from torch.utils.data import DataLoader

    pool = Pooler(encoder.dim, "max_mean")
    device = next(encoder.parameters()).device
    encoder.eval()
    feats, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        feats.append(pool(encoder({k: v.to(device) for k, v in batch.items()})).cpu())
        labels.append(batch["y"])
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def svm_probe(encoder: nn.Module, train_set, val_set, c: float = 0.01) -> float:
    """Validation accuracy of a linear SVM (scikit-learn) fitted on standardised pooled features."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    svm = make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000))
    svm.fit(*pooled_features(encoder, train_set))
    x, y = pooled_features(encoder, val_set)
    return float((svm.predict(x) == y).mean())


class VoxelHead(nn.Module):
    """Per-voxel classes from the encoder: each patch token -> logits for its p^3 voxels: [B, K, W, L, H]."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder, self.n_classes = encoder, n_classes
        tok = encoder.tokenizer
        n = 1
        for p in tok.patch:
            n *= p
        self.head = nn.Sequential(nn.LayerNorm(encoder.dim), nn.Linear(encoder.dim, n * n_classes))

    def forward(self, batch: dict) -> torch.Tensor:
        tok = self.encoder.tokenizer
        logits = self.head(self.encoder(batch)["tokens"])  # [B, n, p^3 * K]
        return unpatchify(logits, tok.patch, tok.grid, self.n_classes)  # [B, K, W, L, H]
