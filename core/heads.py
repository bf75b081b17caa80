"""Downstream heads: poolers, the linear probe, the MLP head and the pooled classifier."""
from __future__ import annotations

import torch
from torch import nn

from scimae.core.checkpoint import Exportable
from scimae.core.config import one_of


HEADS = one_of("mlp", "linear")  # the heads a task config may name (a check_ranges rule)


class Pooler(nn.Module):
    """Pool encoder features to one vector: 'cls', 'mean' over valid slots, 'max_mean' (max and mean over
    valid slots, concatenated: ``out_dim`` = 2 x dim, as in Point-MAE), 'mean_norm' (the encoder's final norm of
    the mean of its last block's output, as ST-MEM pools) or 'attention' pooling."""

    KINDS = ("cls", "mean", "max_mean", "mean_norm", "attention")

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
        if self.kind in ("cls", "mean_norm"):
            return feats[self.kind]
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


class FineTuner(Exportable, nn.Module):
    """The fine-tuner of every domain: the pretrained encoder and a task head, the encoder optionally
    frozen (a probe). Pooled (the default): a pooler, then a linear or MLP head, batch -> [B, n_out].
    Dense: a domain's ``dense`` head maps the encoder's features (with the hidden states of the blocks
    ``taps``) and the batch to an output map, ``dense(features, batch)``."""

    def __init__(self, encoder: nn.Module, n_out: int, pooler: str = "mean", head: str = "mlp",
                 freeze_encoder: bool = False, dense: nn.Module | None = None, taps: tuple[int, ...] = ()):
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.encoder, self.taps = encoder, tuple(taps)
        if dense is None:
            self.pool = Pooler(encoder.dim, pooler)
            self.head = (LinearProbe if head == "linear" else MLPHead)(self.pool.out_dim, n_out)
        else:
            self.pool, self.head = None, dense
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, batch) -> torch.Tensor:
        if self.pool is not None:
            return self.head(self.pool(self.encoder(batch)))  # [B, K]
        features = self.encoder(batch, return_layers=self.taps) if self.taps else self.encoder(batch)
        return self.head(features, batch)


