"""Datasets of brain MRI cases: discovery, splits, MONAI datasets with optional on-disk caching."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import monai.data
import numpy as np
import torch

from scimae.core.config import check_ranges
from scimae.core.data import SyntheticBase, resolve_root, seeded_split
from scimae.core.errors import DataError
from scimae.core.preflight import ON_ERROR_RULE, preflight
from scimae.core.progress import on_terminal
from scimae.domains.brain_mri import synthetic
from scimae.domains.brain_mri.io import MODALITIES, Case, discover_cases, read_volume
from scimae.domains.brain_mri.transforms import preprocess

log = logging.getLogger(__name__)


@dataclass
class SyntheticConfig(SyntheticBase):
    """The embedded default dataset, at a size that trains on a CPU."""

    cases: int = 32  # cases to generate
    roi: list[int] = field(default_factory=lambda: [64, 64, 64])  # volume size of the generated cases, voxels
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # voxel size of the generated cases, mm

    def write(self) -> Path:
        return synthetic.write_dataset(self.folder, self.cases, self.seed)


@dataclass
class BrainDataConfig:
    root: str | None = None  # a BraTS-style folder or a CSV manifest; None = the synthetic dataset
    roi: list[int] = field(default_factory=lambda: [128, 128, 128])  # region of interest the volumes are cropped or padded to, voxels
    spacing: list[float] | None = field(default_factory=lambda: [1.0, 1.0, 1.0])  # resample to this voxel size in mm (None = keep each case's)
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # which to use (any subset)
    val_fraction: float = 0.2  # share of cases held out for validation
    val_root: str | None = None  # validation cases in their own folder (then nothing is split off the root)
    split_seed: int = 0  # seed of the train/validation split
    flips: list[int] = field(default_factory=lambda: [0, 1, 2])  # axes of random training flips (0 = left-right)
    cache: str = "none"  # keep preprocessed volumes: none, memory, or disk (in cache_dir)
    cache_dir: str | None = None  # folder for data.cache=disk
    on_error: str = "stop"  # a bad file stops the run (every one named at once), or skip: train on the rest
    manifest_outside: bool = False  # a CSV manifest may name files outside its own folder
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"data.modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        if not set(self.flips) <= {0, 1, 2}:
            raise ValueError(f"data.flips must list axes among 0, 1, 2, got {self.flips}")
        if len(self.roi) != 3 or min(self.roi) < 1:
            raise ValueError(f"data.roi must be three positive sizes, got {self.roi}")
        if self.cache not in ("none", "memory", "disk") or (self.cache == "disk" and not self.cache_dir):
            raise ValueError(f"data.cache must be none, memory or disk (with data.cache_dir); got {self.cache!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check_ranges("data", self, {"on_error": ON_ERROR_RULE})

    def grid(self) -> tuple[list[int], list[float] | None]:
        """(roi, spacing) in force: the synthetic ones when no root is given."""
        if self.root is None:
            return self.synthetic.roi, self.synthetic.spacing
        return self.roi, self.spacing


def train_val_cases(cfg: BrainDataConfig) -> tuple[list[Case], list[Case]]:
    """The cases of both sides, on the configured modalities: ``val_root``'s as validation, or a seeded split
    of the root's."""
    def read(root) -> list[Case]:
        return checked(restrict(discover_cases(root, cfg.manifest_outside), cfg.modalities), cfg.on_error)

    cases = read(resolve_root(cfg.root, cfg.synthetic))
    if cfg.val_root:
        return cases, read(Path(cfg.val_root))
    return seeded_split(cases, cfg.val_fraction, cfg.split_seed)


def checked(cases: list[Case], on_error: str) -> list[Case]:
    """The cases whose every volume reads (the dataset preflight, :func:`preflight`)."""
    images = [Path(p) for c in cases for p in c.paths.values()]
    segs = [Path(c.seg) for c in cases if c.seg]
    good = set(preflight(images, read_volume, "images", on_error))
    if segs:
        good |= set(preflight(segs, partial(read_volume, label=True), "segmentations", on_error))
    return [c for c in cases if all(Path(p) in good for p in [*c.paths.values(), *([c.seg] if c.seg else [])])]


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

    def source(self, i: int) -> str:
        """The files of case ``i`` (named in errors)."""
        return " + ".join(map(str, self.data[i]["paths"].values()))


class BrainDataset(_Reseed, monai.data.Dataset):
    """Preprocessed cases as dicts: image [4, *roi], present [4], seg [1, *roi] (if any), case_id, labels."""


class DiskCachedBrainDataset(_Reseed, monai.data.PersistentDataset):
    """BrainDataset whose deterministic preprocessing is cached on disk."""


class MemoryCachedBrainDataset(_Reseed, monai.data.CacheDataset):
    """BrainDataset whose deterministic preprocessing is done once and kept in memory."""


def make_dataset(cases: list[Case], cfg: BrainDataConfig, train: bool, seed: int = 0,
                 seg_regions: bool = False, targets: list[dict] | None = None) -> monai.data.Dataset:
    """A dataset of ``cases``; ``targets`` (one dict of tensors per case) ride along with each sample."""
    roi, spacing = cfg.grid()
    transform = preprocess(roi, spacing, train, seed, seg_regions=seg_regions, flips=cfg.flips)
    data = [{**c.as_dict(), **(t or {})} for c, t in zip(cases, targets or [None] * len(cases))]
    if cfg.cache == "disk":
        return DiskCachedBrainDataset(data, transform, cache_dir=cfg.cache_dir)
    if cfg.cache == "memory":
        if not on_terminal():
            log.info("preprocessing %d cases into memory", len(data))
        return MemoryCachedBrainDataset(data, transform, progress=on_terminal())
    return BrainDataset(data, transform)


class WithoutModalities(torch.utils.data.Dataset):
    """``dataset`` with the ``drop`` modalities taken out of every sample (zeros, marked absent): its cases as
    if scanned without them, on the grid they were preprocessed to, with nothing read again."""

    def __init__(self, dataset, drop: list[str]):
        self.dataset, self.rows = dataset, [MODALITIES.index(m) for m in drop]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        image, present = sample["image"].clone(), sample["present"].clone()  # [4, X, Y, Z], [4]
        image[self.rows], present[self.rows] = 0.0, False
        return {**sample, "image": image, "present": present}


def collate(samples: list[dict]) -> dict:
    """Stack tensors and arrays (a disk-cache hit gives arrays where a miss gives tensors); keep case ids and
    label dicts as lists."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        arrays = all(isinstance(v, (torch.Tensor, np.ndarray)) for v in values)
        out[key] = torch.stack([torch.as_tensor(v) for v in values]) if arrays else values
    return out


def load_splits(cfg: BrainDataConfig, seed: int = 0, seg_regions: bool = False):
    """(train dataset, val dataset or None, train cases, val cases) from the config."""
    train_cases, val_cases = train_val_cases(cfg)
    log.info("%d train cases, %d val cases", len(train_cases), len(val_cases))
    train = make_dataset(train_cases, cfg, True, seed, seg_regions)
    val = make_dataset(val_cases, cfg, False, seed, seg_regions) if val_cases else None
    return train, val, train_cases, val_cases


def _label(case: Case, column: str) -> str:
    if column not in case.labels:
        raise DataError(case.case_id, f"no value in label column {column!r} (has {sorted(case.labels)})",
                        "a value for every case (labels.csv or manifest column)")
    return case.labels[column]


def class_targets(cases: list[Case], column: str, classes: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """Class names (sorted, from these cases unless given) and {'y': class index} per case."""
    values = [_label(c, column) for c in cases]
    classes = classes or sorted(set(values))
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise DataError(column, f"classes {unknown} not seen in training", f"one of {classes}")
    return classes, [{"y": torch.tensor(classes.index(v))} for v in values]


def survival_targets(cases: list[Case], time_col: str, event_col: str, bins: int,
                     edges: list[float] | None = None) -> tuple[list[float], list[dict]]:
    """Interval edges (quantiles of these cases' times unless given) and, per case, time, event and the
    interval index for the logistic-hazard head."""
    try:
        times = torch.tensor([float(_label(c, time_col)) for c in cases])
        events = torch.tensor([float(_label(c, event_col)) for c in cases])
    except ValueError as e:
        raise DataError(time_col, f"a non-numeric value ({e})", "numbers of days and 0/1 events") from None
    if edges is None:
        edges = torch.quantile(times, torch.linspace(0, 1, bins + 1)[1:-1]).tolist()
    time_bin = torch.bucketize(times, torch.tensor(edges))
    return edges, [{"time": t, "event": e, "time_bin": b} for t, e, b in zip(times, events, time_bin)]
