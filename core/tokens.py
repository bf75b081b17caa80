"""TokenSet and MaskPlan: the two structures every part of scimae speaks, and the Tokenizer and Target
contracts that produce and score them."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch


@dataclass
class TokenSet:
    """What a tokenizer returns for a batch of B samples with N token slots.

    Slots are laid out as consecutive blocks of ``prod(grid)`` slots each (one block per
    modality, lead or band group); ``grid`` is the token grid inside a block, or None when the slots
    have no grid (point groups). Invalid slots (padding, a missing modality, a nodata patch) are never
    shown to the encoder and never scored.

    A tokenizer gives either ``tokens`` for every slot or an ``embed_fn`` that embeds just the slots asked
    for, so that a masked encoder pays only for what it sees.
    """

    tokens: torch.Tensor | None  # [B, N, D] embedded, slot embedding (position + group) added
    group: torch.Tensor  # [B, N] long group id of each slot
    valid: torch.Tensor  # [B, N] bool
    pos: torch.Tensor  # [B or 1, N, D] slot embedding (position + group), for mask tokens and the decoder
    target: torch.Tensor | None = None  # [B, N, ...] what the target scores (patch values, point groups)
    grid: tuple[int, ...] | None = None  # token grid of one block
    embed_fn: Callable[[torch.Tensor | None], torch.Tensor] | None = None  # idx [B, K] or None -> [B, K or N, D]
    coords: torch.Tensor | None = None  # [B, N, c] slot coordinates where slots have no grid (point-group centres)
    value_mask: torch.Tensor | None = None  # [G, P] bool: the target values that exist per group (fewer channels)
    attn_bias: Callable[[torch.Tensor], torch.Tensor] | None = None  # slots [B, K] -> [B, H, K, K] attention bias
    unit: torch.Tensor | None = None  # [B, N] long: slots hidden together by unit masking (body part x segment)
    salience: torch.Tensor | None = None  # [B, N] float >= 0: how much a slot changes (motion), for salience masking
    fixed: torch.Tensor | None = None  # [B, N] bool: valid slots always shown, never hidden, scored or pooled
    # (ST-MEM's separator tokens)

    def __post_init__(self):
        if (self.tokens is None) == (self.embed_fn is None):
            raise ValueError("TokenSet needs exactly one of tokens and embed_fn")
        B, N = self.valid.shape
        for name in ("group", "valid", "unit", "salience", "fixed"):
            t = getattr(self, name)
            if t is not None and t.shape != (B, N):
                raise ValueError(f"TokenSet.{name}: expected shape {(B, N)}, got {tuple(t.shape)}")
        if self.tokens is not None and self.tokens.shape[:2] != (B, N):
            raise ValueError(f"TokenSet.tokens: expected [B, N] = {[B, N]} leading dims, got {list(self.tokens.shape)}")
        if self.grid is not None and N % _prod(self.grid):
            raise ValueError(f"TokenSet: N={N} is not a multiple of prod(grid)={_prod(self.grid)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, D)."""
        return (*self.valid.shape, self.pos.shape[-1])

    def embed(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded tokens of slots ``idx`` [B, K] -> [B, K, D], or of every slot -> [B, N, D]."""
        if self.embed_fn is not None:
            return self.embed_fn(idx)
        if idx is None:
            return self.tokens
        return gather_slots(self.tokens, idx)

    def with_valid(self, valid: torch.Tensor) -> "TokenSet":
        return replace(self, valid=valid)


@runtime_checkable
class Tokenizer(Protocol):
    """A domain's batch -> TokenSet (an ``nn.Module``). ``group_names`` name its group ids in order; they are
    given here only, and the encoder and target read them from the tokenizer."""

    dim: int
    group_names: list[str]

    def __call__(self, batch: dict) -> TokenSet: ...


@runtime_checkable
class Target(Protocol):
    """What the decoder's predictions are scored against, for the hidden slots ``idx`` [B, M]."""

    def __call__(self, pred: torch.Tensor, ts: TokenSet, idx: torch.Tensor, weight: torch.Tensor,
                 names: Sequence[str]) -> dict[str, torch.Tensor]:
        """pred [B, M, P]; ``weight`` [B, M] is 0 on padding entries; ``names`` are the tokenizer's group names
        -> {'loss': scalar, 'loss/<part>': scalar, ...}."""
        ...

    def to_values(self, pred: torch.Tensor, ts: TokenSet, idx: torch.Tensor) -> torch.Tensor:
        """The prediction [B, M, P] in the units of ``ts.target``."""
        ...


def gather_slots(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Slots ``idx`` [B, M] of ``x`` [B or 1, N, ...] -> [B, M, ...]: one row ``index_select`` (a few times
    faster than ``gather`` with an index expanded over wide patches)."""
    B, M = idx.shape
    if x.shape[0] == 1:
        flat, rows = x[0], idx
    else:
        flat, rows = x.flatten(0, 1), idx + torch.arange(B, device=idx.device)[:, None] * x.shape[1]
    return flat.index_select(0, rows.reshape(-1)).view(B, M, *x.shape[2:])


@dataclass
class MaskPlan:
    """What a masking strategy returns.

    ``mask`` is True where a slot is hidden from the encoder and reconstructed. ``keep`` lists the
    visible slots of each sample (lowest score first); entries where ``keep_pad`` is True are padding
    for samples with fewer visible slots than the batch's largest.
    """

    mask: torch.Tensor  # [B, N] bool, True = hidden and reconstructed
    keep: torch.Tensor  # [B, K] long, visible slot indices
    keep_pad: torch.Tensor  # [B, K] bool, True = padding entry in keep

    @property
    def n_visible(self) -> torch.Tensor:
        return (~self.keep_pad).sum(1)  # [B]


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out
