"""Masking strategies. Each one scores every slot (lower = kept first) and hands the scores to
:func:`plan_from_scores`, which keeps round((1 - ratio) x valid count) valid slots per sample.

All strategies are vectorised over the batch and draw their randomness from an explicit
``torch.Generator``, so one seed gives the same masks on every platform.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from scimae.core.config import AT_LEAST_1, POSITIVE, check_ranges, one_of
from scimae.core.tokens import MaskPlan


KEEP_COUNTS = ("round", "floor", "hide_floor", "group_floor")  # round((1 - ratio) x n), MAE's int(n x (1 - ratio)),
# Point-MAE's n - int(ratio x n) (it floors the hidden count), or ST-MEM's int(n x (1 - ratio)) in every group


def plan_from_scores(scores: torch.Tensor, valid: torch.Tensor, ratio: float, count: str = "round",
                     group: torch.Tensor | None = None) -> MaskPlan:
    """Keep the lowest-scoring round((1 - ratio) x valid count) valid slots of each sample (``count`` floor:
    MAE's int(n x (1 - ratio)); hide_floor: Point-MAE's n - int(ratio x n)), in ascending score order: given
    noise as scores, exactly MAE's ``ids_keep``. group_floor keeps int(n_g x (1 - ratio)) of each group's n_g
    valid slots (``group`` [B, N] needed), group by group, each in ascending score order: ST-MEM's lead-wise
    ``ids_keep``.

    scores [B, N] float, valid [B, N] bool. Invalid slots are never kept and never hidden.
    """
    B, N = scores.shape
    n = valid.sum(1).double()  # [B]
    if count not in KEEP_COUNTS:
        raise ValueError(f"keep count must be one of {KEEP_COUNTS}, got {count!r}")
    order = scores.masked_fill(~valid, math.inf).argsort(dim=1, stable=True)  # [B, N]
    if count == "group_floor":
        if group is None:
            raise ValueError("keep count group_floor needs group ids; the tokenizer gave none")
        order = order.gather(1, group.gather(1, order).argsort(dim=1, stable=True))  # by group, then by score
        G = int(group.max()) + 1 if group.numel() else 1
        per_group = torch.zeros(B, G, device=group.device).scatter_add_(1, group, valid.float())  # [B, G]
        n_keep_g = torch.floor(per_group * (1.0 - ratio))  # [B, G]
        g_sorted = group.gather(1, order)  # [B, N]
        start = per_group.new_zeros(B, G).scatter_add_(1, group, torch.ones_like(per_group[:, :1]).expand(B, N))
        start = start.cumsum(1) - start  # [B, G] first position of each group in ``order``
        rank = torch.arange(N, device=scores.device)[None] - start.gather(1, g_sorted)  # [B, N] rank in its group
        chosen = valid.gather(1, order) & (rank < n_keep_g.gather(1, g_sorted))  # [B, N] in ``order``
        order = order.gather(1, (~chosen).to(torch.int8).argsort(dim=1, stable=True))  # chosen first, in order
        n_keep = chosen.sum(1)
    elif count == "round":
        n_keep = torch.round((1.0 - ratio) * n).long()  # [B]
    elif count == "floor":
        n_keep = torch.floor(n * (1.0 - ratio)).long()
    else:
        n_keep = (n - torch.floor(ratio * n)).long()
    K = int(n_keep.max()) if B else 0
    keep = order[:, :K]  # [B, K]
    keep_pad = torch.arange(K, device=scores.device)[None] >= n_keep[:, None]  # [B, K]
    kept = torch.zeros_like(valid).scatter_(1, keep, ~keep_pad)
    return MaskPlan(mask=valid & ~kept, keep=keep, keep_pad=keep_pad)


def show_fixed(plan: MaskPlan, fixed: torch.Tensor) -> MaskPlan:
    """The plan with the ``fixed`` slots [B, N] shown as well: first in ``keep`` (in slot order), then the plan's
    kept slots; padding entries stay last."""
    n_fixed = fixed.sum(1)  # [B]
    F = int(n_fixed.max()) if fixed.numel() else 0
    if F == 0:
        return plan
    f_idx = fixed.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :F]  # [B, F]
    f_pad = torch.arange(F, device=fixed.device)[None] >= n_fixed[:, None]
    keep, pad = torch.cat([f_idx, plan.keep], 1), torch.cat([f_pad, plan.keep_pad], 1)  # [B, F + K]
    order = pad.to(torch.int8).argsort(dim=1, stable=True)  # entries first, padding last
    keep, pad = keep.gather(1, order), pad.gather(1, order)
    K = int((~pad).sum(1).max())
    return MaskPlan(mask=plan.mask & ~fixed, keep=keep[:, :K], keep_pad=pad[:, :K])


def _check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    return float(ratio)


def _rand(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _need_grid(name: str, grid) -> tuple[int, ...]:
    if not grid:
        raise ValueError(f"{name} masking needs a token grid; the tokenizer gave none")
    return tuple(grid)


def _rank(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x.argsort(dim=dim).argsort(dim=dim).to(torch.float64)


class MaskingStrategy(ABC):
    """Base: ``strategy(valid, generator, group=None, grid=None, coords=None) -> MaskPlan``; ``coords``
    [B, N, c] are slot positions for tokens without a grid (point-group centres). ``count`` is the rule for how
    many slots stay visible (:func:`plan_from_scores`). A strategy that needs what the model knows (HPM's predicted
    losses) takes it as keyword ``context``, passed on to its ``scores``."""

    count = "round"

    def __init__(self, ratio: float = 0.75):
        self.ratio = _check_ratio(ratio)

    @abstractmethod
    def scores(self, valid, generator, group, grid, coords=None) -> torch.Tensor:
        """[B, N] float scores; the lowest are kept."""

    def __call__(self, valid: torch.Tensor, generator: torch.Generator, group: torch.Tensor | None = None,
                 grid: Sequence[int] | None = None, coords: torch.Tensor | None = None, **context) -> MaskPlan:
        return plan_from_scores(self.scores(valid, generator, group, grid, coords, **context), valid, self.ratio,
                                self.count, group)

    def for_tokens(self, ts, generator: torch.Generator, **context) -> MaskPlan:
        """The plan for a TokenSet, its ``fixed`` slots always shown; a domain strategy that needs more of it (body
        parts, motion) overrides this."""
        if ts.fixed is None:
            return self(ts.valid, generator, ts.group, ts.grid, ts.coords, **context)
        fixed = ts.fixed & ts.valid
        return show_fixed(self(ts.valid & ~fixed, generator, ts.group, ts.grid, ts.coords, **context), fixed)


class RandomMasking(MaskingStrategy):
    """MAE: argsort of uniform noise."""

    def scores(self, valid, generator, group, grid, coords=None):
        return _rand(valid.shape, generator, valid.device)


def _blocks(valid: torch.Tensor, grid: Sequence[int]) -> tuple[int, int, int]:
    B, N = valid.shape
    cells = math.prod(grid)
    return B, N // cells, cells


class BlockMasking(MaskingStrategy):
    """SimMIM-style: the grid is cut into cubes of ``block`` tokens per axis, hidden cube by cube
    (at most one cube per sample is partly hidden). Tokens with ``coords`` and no grid (point groups):
    Point-MAE's block, the slots nearest to a random valid slot are hidden."""

    def __init__(self, ratio: float = 0.75, block: int = 2):
        super().__init__(ratio)
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block = int(block)

    def scores(self, valid, generator, group, grid, coords=None):
        if not grid and coords is not None:
            seed = _rand(valid.shape, generator, valid.device).masked_fill(~valid, -1).argmax(1)  # [B] a valid slot
            centre = coords.gather(1, seed[:, None, None].expand(-1, 1, coords.shape[-1]))  # [B, 1, c]
            return -(coords - centre).pow(2).sum(-1)  # nearest first hidden
        grid = _need_grid("block", grid)
        B, nb, cells = _blocks(valid, grid)
        coarse = [math.ceil(g / self.block) for g in grid]
        unit = _rank(_rand((B, nb * math.prod(coarse)), generator, valid.device))
        unit = unit.reshape(B, nb, *coarse)
        for axis, g in enumerate(grid):  # nearest upsampling to the token grid
            unit = unit.repeat_interleave(self.block, dim=2 + axis).narrow(2 + axis, 0, g)
        tie = _rand((B, nb * cells), generator, valid.device).double()
        return unit.reshape(B, -1) + tie


class TubeMasking(MaskingStrategy):
    """VideoMAE: one spatial mask repeated along the time axis (the grid's first axis)."""

    def scores(self, valid, generator, group, grid, coords=None):
        grid = _need_grid("tube", grid)
        B, nb, cells = _blocks(valid, grid)
        T, spatial = grid[0], math.prod(grid[1:])
        col = _rank(_rand((B, nb * spatial), generator, valid.device)).reshape(B, nb, 1, spatial)
        tie = _rand((B, nb * cells), generator, valid.device).double()
        return col.expand(B, nb, T, spatial).reshape(B, -1) + tie


class SharedMasking(MaskingStrategy):
    """One random mask over the grid, repeated in every group (band, lead, modality): a hidden place is
    hidden in every group at once, so its value cannot be read off another group at the same place."""

    def scores(self, valid, generator, group, grid, coords=None):
        grid = _need_grid("shared", grid)
        B, nb, cells = _blocks(valid, grid)
        cell = _rank(_rand((B, 1, cells), generator, valid.device))  # [B, 1, cells]
        tie = _rand((B, nb * cells), generator, valid.device).double()
        return cell.expand(B, nb, cells).reshape(B, -1) + tie


class ColoredNoiseMasking(MaskingStrategy):
    """ColorMAE: white noise filtered in the Fourier domain of the token grid, then top-K.

    red = low-pass, blue = high-pass, green = band-pass, purple = band-stop; ``sigma`` is the
    Gaussian width in tokens (green/purple use sigma and 2 x sigma).
    """

    COLORS = ("red", "blue", "green", "purple")

    def __init__(self, ratio: float = 0.75, color: str = "green", sigma: float = 1.0):
        super().__init__(ratio)
        if color not in self.COLORS:
            raise ValueError(f"color must be one of {self.COLORS}, got {color!r}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.color, self.sigma = color, float(sigma)

    def _response(self, grid, device) -> torch.Tensor:
        freqs = [torch.fft.fftfreq(g, device=device) for g in grid[:-1]] + [torch.fft.rfftfreq(grid[-1], device=device)]
        f2 = sum(f ** 2 for f in torch.meshgrid(*freqs, indexing="ij"))

        def gauss(s):
            return torch.exp(-2 * math.pi ** 2 * s ** 2 * f2)

        low, wide = gauss(self.sigma), gauss(2 * self.sigma)
        return {"red": wide, "blue": 1 - low, "green": low - wide, "purple": 1 - low + wide}[self.color]

    def scores(self, valid, generator, group, grid, coords=None):
        grid = _need_grid("colored-noise", grid)
        B, nb, cells = _blocks(valid, grid)
        dims = tuple(range(-len(grid), 0))
        white = _rand((B, nb, *grid), generator, valid.device)
        colored = torch.fft.irfftn(torch.fft.rfftn(white, dim=dims) * self._response(grid, valid.device), s=grid, dim=dims)
        return -colored.reshape(B, -1)  # the highest values are hidden


def _rank_in_group(noise: torch.Tensor, group: torch.Tensor, valid: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Random rank of each slot among the valid slots of its group (invalid slots rank last)."""
    B, N = group.shape
    key = group.double() * 2 + noise.double() + (~valid).double()  # valid in [2g, 2g+1), invalid after
    order = key.argsort(dim=1)  # [B, N] slots sorted by group, then by noise
    counts = torch.zeros(B, n_groups, dtype=torch.long, device=group.device).scatter_add_(1, group, torch.ones_like(group))
    starts = counts.cumsum(1) - counts  # [B, G]
    pos = torch.arange(N, device=group.device)[None] - starts.gather(1, group.gather(1, order))
    return torch.empty_like(pos).scatter_(1, order, pos).double()  # [B, N]


def _groups(group) -> int:
    if group is None:
        raise ValueError("group masking needs group ids; the tokenizer gave none")
    return int(group.max()) + 1


def _valid_per_group(group, valid, n_groups) -> torch.Tensor:
    return torch.zeros(group.shape[0], n_groups, dtype=torch.float64, device=group.device).scatter_add_(1, group, valid.double())


def sample_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(alpha, 1) samples drawn from ``generator`` (Marsaglia-Tsang, vectorised rounds)."""
    a = alpha.double() + (alpha < 1).double()  # boost alpha < 1, corrected below
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.zeros_like(a)
    done = torch.zeros_like(a, dtype=torch.bool)
    while not bool(done.all()):
        z = torch.randn(a.shape, generator=generator, device=generator.device, dtype=torch.float64).to(a.device)
        u = _rand(a.shape, generator, a.device).double()
        v = (1 + c * z) ** 3
        ok = (v > 0) & (u.log() < 0.5 * z ** 2 + d - d * v + d * v.clamp_min(1e-300).log())
        out = torch.where(ok & ~done, d * v, out)
        done |= ok
    u = _rand(a.shape, generator, a.device).double()
    return torch.where(alpha < 1, out * u ** (1.0 / alpha.double()), out)


class GroupDirichletMasking(MaskingStrategy):
    """MultiMAE / BM-MAE: each sample's visible budget is split across its present groups by
    Dirichlet(alpha); budgets are apportioned exactly (Sainte-Lague) and capped by what a group has."""

    def __init__(self, ratio: float = 0.75, alpha: float = 1.0):
        super().__init__(ratio)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def shares(self, valid, generator, group) -> torch.Tensor:
        """Dirichlet shares [B, G] over the groups each sample has (zero for absent groups)."""
        G = _groups(group)
        present = _valid_per_group(group, valid, G) > 0
        g = sample_gamma(torch.full(present.shape, self.alpha, device=valid.device), generator)
        g = (g * present).clamp_min(0)
        return g / g.sum(1, keepdim=True).clamp_min(1e-300)

    def scores(self, valid, generator, group, grid, coords=None):
        G = _groups(group)
        p = self.shares(valid, generator, group).clamp_min(1e-12)  # [B, G]
        rank = _rank_in_group(_rand(valid.shape, generator, valid.device), group, valid, G)
        return (rank + 0.5) / p.gather(1, group)


class GroupIndependentMasking(MaskingStrategy):
    """SatMAE: every group is masked at the ratio on its own (proportional apportionment)."""

    def scores(self, valid, generator, group, grid, coords=None):
        G = _groups(group)
        n = _valid_per_group(group, valid, G).clamp_min(1)  # [B, G]
        rank = _rank_in_group(_rand(valid.shape, generator, valid.device), group, valid, G)
        return (rank + 0.5) / n.gather(1, group)


class HardPatchMasking(MaskingStrategy):
    """HPM (Wang et al., CVPR 2023): of the ratio x n slots a sample hides, a share growing over training from
    ``hard[0]`` to ``hard[1]`` (easy to hard) are those the model predicts it reconstructs worst; the rest are
    random.

    ``hardness`` [B, N] (the model's predicted loss per slot) and ``progress`` (share of training done, 0 to 1) come
    as context from :class:`~scimae.core.mae.MaskedAutoencoder`, whose loss predictor learns them.
    """

    def __init__(self, ratio: float = 0.75, hard: Sequence[float] = (0.0, 0.5)):
        super().__init__(ratio)
        if len(hard) != 2 or not all(0.0 <= h <= 1.0 for h in hard):
            raise ValueError(f"hard must be [start, end], each in [0, 1], got {list(hard)}")
        self.hard = (float(hard[0]), float(hard[1]))

    def share(self, progress: float) -> float:
        """The share of hidden slots chosen by predicted loss at ``progress`` (0 to 1) of training."""
        p = min(max(float(progress), 0.0), 1.0)
        return self.hard[0] + p * (self.hard[1] - self.hard[0])

    def scores(self, valid, generator, group, grid, coords=None, hardness=None, progress=0.0):
        if hardness is None:
            raise ValueError("hpm masking needs the model's predicted loss of every slot; a MaskedAutoencoder built "
                             "with it gives them")
        noise = _rand(valid.shape, generator, valid.device).double()  # [B, N] in [0, 1)
        n_hard = torch.floor(self.share(progress) * self.ratio * valid.sum(1).double())  # [B]
        rank = _rank(-hardness.double().masked_fill(~valid, -math.inf))  # [B, N], 0 = hardest valid slot
        return torch.where(rank < n_hard[:, None], 2.0, noise)  # the hardest score highest: hidden first


STRATEGIES = {
    "random": RandomMasking,
    "block": BlockMasking,
    "tube": TubeMasking,
    "shared": SharedMasking,
    "colored": ColoredNoiseMasking,
    "group_dirichlet": GroupDirichletMasking,
    "group_independent": GroupIndependentMasking,
    "hpm": HardPatchMasking,
}


def build_masking(name: str, ratio: float, strategies: dict[str, type[MaskingStrategy]] | None = None,
                  count: str = "round", **options) -> MaskingStrategy:
    """Build a strategy by name, from the core's or a domain's own ``strategies``, with the keep ``count`` rule;
    of ``options`` (block, color, sigma, alpha, a domain's own) it takes those it has."""
    table = {**STRATEGIES, **(strategies or {})}
    if name not in table:
        raise ValueError(f"unknown masking strategy {name!r}; expected one of {sorted(table)}")
    cls = table[name]
    own = inspect.signature(cls.__init__).parameters
    strategy = cls(ratio, **{k: v for k, v in options.items() if k in own})
    strategy.count = count
    return strategy


@dataclass
class MaskConfig:
    """The core strategies and their options. A domain with strategies of its own subclasses it: their
    classes in ``STRATEGIES`` and their options as fields, so its config parses whatever was imported."""

    STRATEGIES: ClassVar[dict[str, type[MaskingStrategy]]] = {}  # a domain's own strategies, by name
    RETIRED_KEYS: ClassVar[tuple[str, ...]] = ("tau",)  # written by earlier exports; read and ignored
    strategy: str = "random"  # random, block, tube, shared, colored, group_dirichlet, group_independent, hpm
    ratio: float = 0.75  # share of each sample's valid tokens hidden from the encoder
    block: int = 2  # block: cube size in tokens
    color: str = "green"  # colored: red, blue, green, purple
    sigma: float = 1.0  # colored: filter width in tokens
    alpha: float = 1.0  # group_dirichlet: concentration
    hard: list[float] = field(default_factory=lambda: [0.0, 0.5])  # hpm: share of the hidden slots chosen by
    # predicted loss at the start and at the end of training (linear between)
    count: str = "round"  # visible slots: round((1 - ratio) x n), floor (MAE's int(n x (1 - ratio))), hide_floor
    # (Point-MAE's n - int(ratio x n)) or group_floor (ST-MEM's int(n x (1 - ratio)) in every group)

    def __post_init__(self):
        check_ranges("model.mask", self, {"ratio": ("in (0, 1)", lambda v: 0 < v < 1), "block": AT_LEAST_1,
                                          "sigma": POSITIVE, "alpha": POSITIVE, "count": one_of(*KEEP_COUNTS),
                                          "hard": ("[start, end], each in [0, 1]",
                                                   lambda v: len(v) == 2 and all(0 <= h <= 1 for h in v))})
        self.build()  # validates the strategy

    def build(self) -> MaskingStrategy:
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("strategy", "ratio")}
        return build_masking(self.strategy, self.ratio, self.STRATEGIES, **options)
