"""TokenSet and MaskPlan: the two structures every part of scimae speaks."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class TokenSet:
    """What a tokenizer returns for a batch of B samples with N token slots.

    Slots are laid out as ``n_blocks`` consecutive blocks of ``prod(grid)`` slots each (one block per
    modality, lead or band group); ``grid`` is the token grid inside a block, or None when the slots
    have no grid (point groups). Invalid slots (padding, a missing modality, a nodata patch) are never
    shown to the encoder and never scored.
    """

    tokens: torch.Tensor  # [B, N, D] embedded, positions and group embeddings added
    group: torch.Tensor  # [B, N] long group id of each slot
    valid: torch.Tensor  # [B, N] bool
    pos: torch.Tensor  # [B or 1, N, D] positional embedding of each slot, for the decoder
    target: torch.Tensor | None = None  # [B, N, ...] what the target scores (patch values, point groups)
    grid: tuple[int, ...] | None = None  # token grid of one block
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        B, N, _ = self.tokens.shape
        for name in ("group", "valid"):
            t = getattr(self, name)
            if t.shape != (B, N):
                raise ValueError(f"TokenSet.{name}: expected shape {(B, N)}, got {tuple(t.shape)}")
        if self.grid is not None and N % _prod(self.grid):
            raise ValueError(f"TokenSet: N={N} is not a multiple of prod(grid)={_prod(self.grid)}")

    @property
    def n_blocks(self) -> int:
        return self.tokens.shape[1] // _prod(self.grid) if self.grid else 1

    def with_valid(self, valid: torch.Tensor) -> "TokenSet":
        return replace(self, valid=valid)


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
