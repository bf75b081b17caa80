"""Datasets of brain MRI cases: discovery, splits, MONAI datasets with optional on-disk caching."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import monai.data
import torch

from core.errors import DataError
from domains.brain_mri import synthetic
from domains.brain_mri.io import MODALITIES, Case, discover_cases
from domains.brain_mri.transforms import preprocess

log = logging.getLogger(__name__)


@dataclass
class SyntheticConfig:
    """The embedded default dataset, at a size that trains on a CPU."""

    cases: int = 32
    seed: int = 0
    folder: str | None = None  # default: the user cache (~/.cache/scimae or $SCIMAE_CACHE)
    roi: list[int] = field(default_factory=lambda: [64, 64, 64])
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])


@dataclass
class BrainDataConfig:
    root: str | None = None  # a BraTS-style folder or a CSV manifest; None = the synthetic dataset
    roi: list[int] = field(default_factory=lambda: [128, 128, 128])
    spacing: list[float] | None = field(default_factory=lambda: [1.0, 1.0, 1.0])
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # which to use (any subset)
    val_fraction: float = 0.2
    split_seed: int = 0
    cache_dir: str | None = None  # opt-in: cache preprocessed volumes on disk here
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"data.modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        if len(self.roi) != 3 or min(self.roi) < 1:
            raise ValueError(f"data.roi must be three positive sizes, got {self.roi}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")

    def grid(self) -> tuple[list[int], list[float] | None]:
        """(roi, spacing) in force: the synthetic ones when no root is given."""
        if self.root is None:
            return self.synthetic.roi, self.synthetic.spacing
        return self.roi, self.spacing


def resolve_root(cfg: BrainDataConfig) -> Path:
    """The data folder: the user's, or the synthetic dataset (written on first use)."""
    if cfg.root is not None:
        return Path(cfg.root)
    s = cfg.synthetic
    return synthetic.write_dataset(s.folder, s.cases, s.seed)


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """A reproducible random split by case (never by volume)."""
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = math.floor(len(cases) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(cases) > 1:
        n_val = 1
    val = sorted(order[:n_val])
    return [cases[i] for i in sorted(order[n_val:])], [cases[i] for i in val]


def restrict(cases: list[Case], modalities: list[str]) -> list[Case]:
    """Keep only the chosen modalities; cases left with none are dropped (and logged)."""
    out = []
    for c in cases:
        paths = {m: p for m, p in c.paths.items() if m in modalities}
        if paths:
            out.append(Case(c.case_id, paths, c.seg, c.labels))
        else:
            log.warning("case %s has none of %s; left out", c.case_id, modalities)
    if not out:
        raise DataError("cases", f"no case with any of {modalities}", "at least one case with a chosen modality")
    return out


class _Reseed:
    def reseed(self, seed: int) -> None:
        """Give this copy (e.g. a DataLoader worker's) its own augmentation stream."""
        self.transform.set_random_state(seed % 2 ** 32)


class BrainDataset(_Reseed, monai.data.Dataset):
    """Preprocessed cases as dicts: image [4, *roi], present [4], seg [1, *roi] (if any), case_id, labels."""


class CachedBrainDataset(_Reseed, monai.data.PersistentDataset):
    """BrainDataset whose deterministic preprocessing is cached on disk."""


def make_dataset(cases: list[Case], cfg: BrainDataConfig, train: bool, seed: int = 0,
                 seg_regions: bool = False) -> monai.data.Dataset:
    roi, spacing = cfg.grid()
    transform = preprocess(roi, spacing, train, seed, seg_regions=seg_regions)
    data = [c.as_dict() for c in cases]
    if cfg.cache_dir:
        return CachedBrainDataset(data, transform, cache_dir=cfg.cache_dir)
    return BrainDataset(data, transform)


def collate(samples: list[dict]) -> dict:
    """Stack tensors; keep case ids and label dicts as lists."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def load_splits(cfg: BrainDataConfig, seed: int = 0, seg_regions: bool = False):
    """(train dataset, val dataset or None, train cases, val cases) from the config."""
    cases = restrict(discover_cases(resolve_root(cfg)), cfg.modalities)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.split_seed)
    log.info("%d cases: %d train, %d val", len(cases), len(train_cases), len(val_cases))
    train = make_dataset(train_cases, cfg, True, seed, seg_regions)
    val = make_dataset(val_cases, cfg, False, seed, seg_regions) if val_cases else None
    return train, val, train_cases, val_cases
