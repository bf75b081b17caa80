"""Downstream heads: poolers, probes, classifiers, regression, survival, and layer-wise lr decay."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from scimae.core.checkpoint import Exportable
from scimae.core.metrics import classification_scores


class Pooler(nn.Module):
    """Pool encoder features to one vector: 'cls', 'mean' over valid slots, 'max_mean' (max and mean over
    valid slots, concatenated: ``out_dim`` = 2 x dim, as in Point-MAE) or 'attention' pooling."""

    KINDS = ("cls", "mean", "max_mean", "attention")

    def __init__(self, dim: int, kind: str = "mean", heads: int = 4):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"pooler must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.out_dim = 2 * dim if kind == "max_mean" else dim
        if kind == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.normal_(self.query, std=0.02)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm = nn.LayerNorm(dim)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``feats`` from MAEEncoder: tokens [B, N, D], valid [B, N], cls [B, D] -> [B, D]."""
        if self.kind == "cls":
            return feats["cls"]
        tokens, valid = feats["tokens"], feats["valid"]
        if self.kind in ("mean", "max_mean"):
            w = valid[..., None].to(tokens.dtype)
            mean = (tokens * w).sum(1) / w.sum(1).clamp_min(1)  # [B, D]
            if self.kind == "mean":
                return mean
            return torch.cat([tokens.masked_fill(~valid[..., None], float("-inf")).amax(1), mean], dim=1)  # [B, 2D]
        q = self.query.expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(q, tokens, tokens, key_padding_mask=~valid)  # [B, 1, D]
        return self.norm(out[:, 0])


class LinearProbe(nn.Module):
    """MAE's linear probe: a BatchNorm without affine, then one linear layer."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> dropout -> Linear; the head for classification and regression."""

    def __init__(self, dim: int, out: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PooledClassifier(Exportable, nn.Module):
    """Encoder + pooler + a linear or MLP head, the encoder optionally frozen (a linear probe):
    batch -> logits [B, K]."""

    def __init__(self, encoder: nn.Module, n_classes: int, pooler: str = "mean", head: str = "mlp",
                 freeze_encoder: bool = False):
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.encoder = encoder
        self.pool = Pooler(encoder.dim, pooler)
        self.head = (LinearProbe if head == "linear" else MLPHead)(self.pool.out_dim, n_classes)
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.pool(self.encoder(batch)))  # [B, K]


def classification_step(model: nn.Module, batch, generator=None) -> dict:
    """A training step for single-label classification: cross-entropy against ``batch['y']``."""
    return {"loss": F.cross_entropy(model(batch), batch["y"])}


def classification_evaluate(n_classes: int):
    """An ``evaluate`` hook: accuracy and macro-F1 of ``model(batch)`` against ``batch['y']``."""

    def evaluate(model, batches) -> dict:
        preds, refs = zip(*[(model(batch).argmax(1).cpu(), batch["y"].cpu()) for batch in batches])
        return classification_scores(torch.cat(preds), torch.cat(refs))

    return evaluate


def first_per_class(items: list, labels: list[int], k: int) -> list:
    """The first ``k`` items of each class, in order: a fixed few-label training set."""
    count: dict[int, int] = {}
    kept = []
    for item, label in zip(items, labels):
        count[label] = count.get(label, 0) + 1
        if count[label] <= k:
            kept.append(item)
    return kept


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


_BLOCK = re.compile(r"blocks\.blocks\.(\d+)\.")


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                       depth: int | None = None) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay (BEiT/MAE fine-tuning).

    The tokenizer and cls/mask tokens are layer 0, encoder block i is layer i + 1, everything else
    (final norm, heads) layer depth + 1; layer l gets lr x layer_decay^(depth + 1 - l). ``depth``
    defaults to the number of encoder blocks in the model. Biases, norms and tokens get no weight decay.
    """
    if depth is None:
        depth = 1 + max((int(m.group(1)) for name, _ in model.named_parameters() if (m := _BLOCK.search(name))),
                        default=-1)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = _BLOCK.search(name)
        if m:
            layer = int(m.group(1)) + 1
        elif "tokenizer." in name or name.endswith(("cls_token", "mask_token")):
            layer = 0
        else:
            layer = depth + 1
        decay = p.ndim > 1 and not name.endswith(("cls_token", "mask_token"))
        g = groups.setdefault((layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                               "lr": lr * layer_decay ** (depth + 1 - layer)})
        g["params"].append(p)
    return list(groups.values())
