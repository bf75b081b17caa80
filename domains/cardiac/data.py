"""Windows of cardiac records as a dataset: discovery, preprocessing once, splits by record, labels."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scimae.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, check_ranges, one_of
from scimae.core.data import SyntheticBase, resolve_root, seeded_split
from scimae.core.errors import DataError
from scimae.core.files import build_folder_once
from scimae.core.preflight import ON_ERROR_RULE, preflight
from scimae.core.progress import progress
from scimae.domains.cardiac import synthetic
from scimae.domains.cardiac.io import CHANNELS, Signal, find_records, read_record
from scimae.domains.cardiac.transforms import (check_rate, fill_gaps, filtered, standardise, stmem_crops, to_slots,
                                               windows)

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # of the window cache's layout and preprocessing code


@dataclass
class SyntheticConfig(SyntheticBase):
    records: int = 96  # records to generate
    seconds: float = 30.0  # length of each generated record

    def write(self) -> Path:
        return synthetic.write_dataset(self.folder, self.records, self.seconds, self.seed)


@dataclass
class CardiacDataConfig:
    root: str | None = None  # a folder of WFDB records / EDF files; None = the synthetic dataset
    fs: float = 250.0  # the model's sampling rate
    window_s: float = 10.0  # window length in seconds (one sample = one window)
    stride_s: float = 10.0  # step between windows in seconds
    patch: int = 100  # samples per token (0.4 s at 250 Hz)
    max_gap_s: float = 0.5  # NaN gaps up to this long are interpolated, longer ones are invalid patches
    channels: list[str] = field(default_factory=lambda: list(CHANNELS))  # which to use (any subset)
    diagnoses: list[str] = field(default_factory=lambda: list(synthetic.DIAGNOSES))  # multi-label classes
    val_fraction: float = 0.2  # share of records held out for validation (split by record)
    val_root: str | None = None  # validation records in their own folder (then nothing is split off the root)
    split_seed: int = 0  # seed of the train/validation split
    on_error: str = "stop"  # a bad record stops the run (every one named at once), or skip: train on the rest
    preprocessing: str = "scimae"  # scimae: band-pass, windows every stride_s, each lead standardised; stmem: ST-MEM's
    # (three crops of window_s per 10-s window, FFT resampling, order-5 filters, one standardisation over all leads)
    cache_dir: str | None = None  # where preprocessed windows are kept (default: the user cache, $SCIMAE_CACHE)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        check_ranges("data", self, {**dict.fromkeys(("fs", "window_s", "stride_s"), POSITIVE), "patch": AT_LEAST_1,
                                    "max_gap_s": NON_NEGATIVE, "val_fraction": UNIT_INTERVAL,
                                    "on_error": ON_ERROR_RULE, "preprocessing": one_of("scimae", "stmem")})
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown or not self.channels:
            raise ValueError(f"data.channels must be a non-empty subset of {CHANNELS}, got {self.channels}")
        if self.window_length % self.patch:
            raise ValueError(f"data.patch {self.patch} must divide the window of {self.window_length} samples")

    @property
    def window_length(self) -> int:
        return int(round(self.window_s * self.fs))


def record_windows(sig: Signal, cfg: CardiacDataConfig, channels: list[str] | None = None) -> dict[str, np.ndarray]:
    """One record -> model inputs per window: image [W, 13, 1, L], present [W, 13], patch_valid [W, 13, n]
    (with ST-MEM's preprocessing, three crops per 10-s window, window-major)."""
    return records_windows([sig], cfg, channels)[0]


def records_windows(sigs: list[Signal], cfg: CardiacDataConfig, channels: list[str] | None = None) -> list[dict]:
    """:func:`record_windows` of many records; with scimae's preprocessing, records of equal rate, channels and
    length are resampled, filtered, cut and standardised as one array [R, C, T]."""
    if channels is not None:
        sigs = [_select(s, channels) for s in sigs]
    if cfg.preprocessing == "stmem":
        return [to_slots(*stmem_crops(s, cfg.fs, cfg.window_length, cfg.max_gap_s), s.channels, cfg.patch) for s in sigs]
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(sigs):
        check_rate(s)
        groups.setdefault((s.fs, tuple(s.channels), s.data.shape[1]), []).append(i)
    out: list[dict] = [{}] * len(sigs)
    for idx in groups.values():
        first = sigs[idx[0]]
        filled = [fill_gaps(sigs[i].data, int(cfg.max_gap_s * first.fs)) for i in idx]
        x, invalid = filtered(np.stack([f[0] for f in filled]), np.stack([f[1] for f in filled]), first.fs, cfg.fs,
                              first.channels)  # [R, C, T]
        w, bad = windows(x, invalid, cfg.window_length, int(round(cfg.stride_s * cfg.fs)), first.source)  # [R, W, C, L]
        slots = to_slots(standardise(w, bad), bad, first.channels, cfg.patch)
        for j, i in enumerate(idx):
            out[i] = {k: v[j] for k, v in slots.items()}
    return out


def _select(sig: Signal, channels: list[str]) -> Signal:
    keep = [i for i, ch in enumerate(sig.channels) if ch in channels]
    return Signal(sig.data[keep], sig.fs, [sig.channels[i] for i in keep], sig.source, sig.labels)


def labels_of(labels: dict, diagnoses: list[str]) -> tuple[list[bool], float]:
    """Multi-hot diagnoses (from a 'labels: A,B' header comment) and heart rate ('hr'; NaN if absent)."""
    names = {x.strip() for x in labels.get("labels", "").split(",") if x.strip()}
    return [d in names for d in diagnoses], float(labels["hr"]) if "hr" in labels else float("nan")


def record_classes(records: list[Path], key: str) -> list[str]:
    """The sorted class names found in the records' header comment ``key`` (every record must have one)."""
    names = set()
    for path in records:
        sig = read_record(path)
        if key not in sig.labels:
            raise DataError(path, f"no header comment {key!r} (has {sorted(sig.labels)})", f"'{key}: <class>' per record")
        names.add(sig.labels[key])
    return sorted(names)


def class_of(labels: dict, source, key: str, classes: list[str]) -> int:
    """The index in ``classes`` of a record's header comment ``key``."""
    value = labels.get(key)
    if value not in classes:
        raise DataError(source, f"header comment {key}: {value}", f"one of {classes}")
    return classes.index(value)


def window_cache(records: list[Path], cfg: CardiacDataConfig, channels: list[str]) -> Path:
    """The folder of the records' preprocessed windows (image.f32 [W, 13, 1, L] float32, present.npy,
    patch_valid.npy, windows.json: windows and header labels per record), built once with a progress bar in
    ``cfg.cache_dir`` (default: the user cache) and found again by a key of the preprocessing settings, the
    channels and every record's files with their sizes and modification times: a changed record builds anew."""
    settings = [getattr(cfg, k) for k in ("fs", "window_s", "stride_s", "patch", "max_gap_s", "preprocessing")]
    text = json.dumps([CACHE_VERSION, settings, sorted(channels), _stamps(records)])
    key = hashlib.sha1(text.encode()).hexdigest()[:20]
    return build_folder_once(Path(cfg.cache_dir) / key if cfg.cache_dir else None, key,
                             lambda tmp: _write_windows(tmp, records, cfg, channels), "cardiac_windows")


def _stamps(records: list[Path]) -> list[str]:
    """Each record's files (``name.*``: header and signal) with size and modification time, one listing per folder."""
    listing: dict[Path, list[os.DirEntry]] = {}
    out = []
    for r in map(Path, records):
        if r.parent not in listing:
            listing[r.parent] = sorted(os.scandir(r.parent), key=lambda e: e.name)
        files = [e for e in listing[r.parent] if e.name == r.name or e.name.startswith(r.name + ".")]
        out.append("|".join(f"{e.path}:{e.stat().st_size}:{e.stat().st_mtime_ns}" for e in files))
    return out


def _write_windows(folder: Path, records: list[Path], cfg: CardiacDataConfig, channels: list[str]) -> None:
    counts, labels, present, patch_valid = [], [], [], []
    with open(folder / "image.f32", "wb") as f:
        for path in progress(records, "preprocessing records into the window cache"):
            sig = read_record(path)
            labels.append(sig.labels)
            if not set(sig.channels) & set(channels):
                log.info("%s has none of %s; left out", path, channels)
                counts.append(0)
                continue
            w = record_windows(sig, cfg, channels)
            f.write(np.ascontiguousarray(w["image"]).tobytes())
            present.append(w["present"])
            patch_valid.append(w["patch_valid"])
            counts.append(len(w["image"]))
    if not present:
        raise DataError(records[0].parent if records else "records", f"no record with any of {channels}",
                        "at least one record with a chosen channel")
    np.save(folder / "present.npy", np.concatenate(present))
    np.save(folder / "patch_valid.npy", np.concatenate(patch_valid))
    shape = [len(CHANNELS), 1, cfg.window_length]
    (folder / "windows.json").write_text(json.dumps({"counts": counts, "labels": labels, "window": shape}))


class CardiacWindows(Dataset):
    """All windows of a list of records, preprocessed once into the window cache (:func:`window_cache`) and read
    from it one window at a time, so memory does not grow with the records. ``y`` is the multi-hot diagnoses, or
    with ``label`` the index in ``classes`` of that header comment (one class per record)."""

    def __init__(self, records: list[Path], cfg: CardiacDataConfig, channels: list[str] | None = None,
                 label: str | None = None, classes: list[str] | None = None):
        folder = window_cache(records, cfg, channels or cfg.channels)
        meta = json.loads((folder / "windows.json").read_text())
        counts = np.array(meta["counts"])
        self.record = torch.from_numpy(np.repeat(np.arange(len(records)), counts))  # [W]: the record of each window
        self.present = torch.from_numpy(np.load(folder / "present.npy"))  # [W, 13]
        self.patch_valid = torch.from_numpy(np.load(folder / "patch_valid.npy"))  # [W, 13, n]
        labels = [labels_of(lab, cfg.diagnoses) for lab in meta["labels"]]
        if label is not None:
            y = [class_of(lab, path, label, classes) if n else -1 for lab, path, n in zip(meta["labels"], records, counts)]
            self.y = torch.tensor(y)[self.record]  # [W] class indices
        else:
            self.y = torch.tensor([d for d, _ in labels], dtype=torch.float32)[self.record]  # [W, n_diagnoses]
        self.hr = torch.tensor([hr for _, hr in labels], dtype=torch.float32)[self.record]  # [W]
        self.records, self.window = records, tuple(meta["window"])
        self.image_file, self._open = folder / "image.f32", (None, None)  # (pid, file): each process opens its own

    def source(self, i: int) -> str:
        """The record window ``i`` comes from (named in errors)."""
        return str(self.records[int(self.record[i])])

    def __len__(self) -> int:
        return len(self.y)

    def image(self, i: int) -> torch.Tensor:
        """Window ``i`` [13, 1, L], read from the cache file."""
        pid, f = self._open
        if pid != os.getpid():
            f = open(self.image_file, "rb")
            self._open = (os.getpid(), f)
        out = torch.empty(self.window)
        f.seek(i * out.nbytes)
        f.readinto(out.numpy())
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image(i), "present": self.present[i], "patch_valid": self.patch_valid[i],
                "y": self.y[i], "hr": self.hr[i]}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": (None, None)}  # a file handle stays in its process


def train_val_records(cfg: CardiacDataConfig) -> tuple[list[Path], list[Path]]:
    """The records of both sides (each read once before, see :func:`preflight`): ``val_root``'s as validation,
    or a seeded split of the root's."""
    records = preflight(find_records(resolve_root(cfg.root, cfg.synthetic)), read_record, "records", cfg.on_error)
    if cfg.val_root:
        return records, preflight(find_records(Path(cfg.val_root)), read_record, "validation records", cfg.on_error)
    return seeded_split(records, cfg.val_fraction, cfg.split_seed)


def load_splits(cfg: CardiacDataConfig, channels: list[str] | None = None):
    """(train windows, val windows or None) from the config."""
    train, val = train_val_records(cfg)
    log.info("%d train records, %d val records", len(train), len(val))
    return CardiacWindows(train, cfg, channels), (CardiacWindows(val, cfg, channels) if val else None)
