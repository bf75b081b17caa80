"""Skeleton datasets: a folder of NTU ``.skeleton`` files (or .npy / .npz arrays), cleaned, normalised and
cut to a fixed length; cross-subject and cross-view splits; a list of samples to skip."""
from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scimae.core.config import AT_LEAST_1, UNIT_INTERVAL, check_ranges
from scimae.core.data import SyntheticBase, resolve_root
from scimae.core.checkpoint import atomic_write
from scimae.core.errors import DataError
from scimae.core.files import cache_root, find_files
from scimae.core.preflight import ON_ERROR_RULE, file_stamp, settle
from scimae.core.progress import progress
from scimae.domains.skeleton import synthetic
from scimae.domains.skeleton.io import in_split, parse_name, read_arrays, read_skeleton
from scimae.domains.skeleton.transforms import clean, random_rotation, resample_frames

log = logging.getLogger(__name__)
PARSE_VERSION = 1  # raise when reading, cleaning or resampling changes what a file gives


@dataclass
class SyntheticConfig(SyntheticBase):
    per_action: int = 30  # sequences to generate per action

    def write(self) -> Path:
        return synthetic.write_dataset(self.folder, self.per_action, self.seed)


@dataclass
class SkeletonDataConfig:
    root: str | None = None  # a folder of .skeleton files, or a .npy / .npz array file (N, C, T, V, M)
    frames: int = 32  # every sequence is resampled to this many frames
    bodies: int = 2  # bodies kept per sequence (chosen by motion)
    joints: int = 25  # joints per body (25 for Kinect v2 / NTU RGB+D)
    split: str = "xsub"  # xsub (cross-subject) or xview (cross-view); arrays without names split at random
    skip_list: str | None = None  # a text file of sample names to leave out (e.g. NTU's missing skeletons)
    rotate: float = 0.3  # training augmentation: random rotation up to this many radians about each axis
    val_fraction: float = 0.25  # for arrays, which carry no performer or camera
    on_error: str = "stop"  # a bad file stops the run (every one named at once), or skip: train on the rest
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        if self.split not in ("xsub", "xview"):
            raise ValueError(f"data.split must be 'xsub' or 'xview', got {self.split!r}")
        check_ranges("data", self, {**dict.fromkeys(("frames", "bodies", "joints"), AT_LEAST_1),
                                    "val_fraction": UNIT_INTERVAL, "on_error": ON_ERROR_RULE})


def load_samples(cfg: SkeletonDataConfig) -> tuple[list[dict], list[dict]]:
    """(train, val) samples: {'name', 'xyz' [M, T, V, 3], 'present' [M], 'action' (1-based or -1)}."""
    root = resolve_root(cfg.root, cfg.synthetic)
    skip = set()
    if cfg.skip_list:
        if not Path(cfg.skip_list).is_file():
            raise DataError(cfg.skip_list, "no such file", "a text file of sample names to leave out, one per line")
        skip = {ln.strip() for ln in Path(cfg.skip_list).read_text().splitlines() if ln.strip()}
    if root.is_file():
        x, y = read_arrays(root)  # [N, C, T, V, M]
        x = np.pad(x[..., : cfg.bodies], [(0, 0)] * 4 + [(0, max(0, cfg.bodies - x.shape[-1]))])
        samples = [{"name": f"{root.name}[{i}]", "xyz": resample_frames(s[:3].transpose(3, 1, 2, 0), cfg.frames),
                    "present": np.abs(s[:3]).sum((0, 1, 2)) > 0, "action": int(y[i]) + 1 if y is not None else -1}
                   for i, s in enumerate(x)]
        empty = [s["name"] for s in samples if not s["present"].any()]
        if empty:
            raise DataError(root, f"{len(empty)} sequences with no body in any frame ({', '.join(empty[:3])}"
                                  f"{', ...' if len(empty) > 3 else ''})", "at least one body with non-zero joints")
        order = np.random.default_rng(0).permutation(len(samples))
        n_val = int(len(samples) * cfg.val_fraction)
        return [samples[i] for i in sorted(order[n_val:])], [samples[i] for i in sorted(order[:n_val])]
    if not root.is_dir():
        raise DataError(root, "no such file or folder", "a folder of .skeleton files or a .npy/.npz array file")
    files = find_files(root, lambda p: p.suffix == ".skeleton" and p.stem not in skip)
    if not files:
        raise DataError(root, "no .skeleton files", "NTU RGB+D files such as S001C002P003R002A013.skeleton")
    if skip:
        log.info("%d samples left out by %s", len(skip), cfg.skip_list)
    bad = {}
    train, val = [], []
    for f, sample in zip(files, _read_cached(root, files, cfg, bad)):
        if sample is not None:
            meta = parse_name(f)
            sample["action"] = meta.get("action", -1)
            (train if not meta or in_split(meta, cfg.split, True) else val).append(sample)
    settle(bad, len(files), ".skeleton files", cfg.on_error)
    return train, val


def _read_cached(root: Path, files: list[Path], cfg: SkeletonDataConfig, bad: dict) -> list[dict | None]:
    """{'name', 'xyz', 'present'} per file (None for a bad one, its message put in ``bad``). Parsed files are
    kept in one array file per folder and reading settings in the user cache, and a file whose path, size or
    modification time changed is parsed again: a second run reads arrays instead of text."""
    key = f"{root.resolve()}|joints={cfg.joints}|bodies={cfg.bodies}|frames={cfg.frames}|v{PARSE_VERSION}"
    cache = cache_root("skeleton_parsed") / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    known = {}  # stamp -> (xyz [M, T, V, 3], present [M])
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                known = dict(zip(z["stamp"].tolist(), zip(z["xyz"], z["present"])))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("%s: an unreadable parse cache (%s); the files are parsed again", cache, e)
    stamps, out, parsed = [file_stamp(f) for f in files], [], 0
    for f, stamp in zip(progress(files, f"reading {root}"), stamps):  # every file: bad ones are named together
        if stamp not in known:
            try:
                xyz, present = clean(read_skeleton(f, cfg.joints), cfg.bodies, name=f)
            except DataError as e:
                bad[f] = str(e)
                out.append(None)
                continue
            known[stamp] = (resample_frames(xyz, cfg.frames).astype(np.float32), present)
            parsed += 1
        out.append({"name": f.stem, "xyz": known[stamp][0], "present": known[stamp][1]})
    if parsed:
        atomic_write(cache, lambda tmp: _save(tmp, {s: known[s] for s in stamps if s in known}))
    return out


def _save(path: str, samples: dict) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, stamp=np.array(list(samples)), xyz=np.stack([v[0] for v in samples.values()]),
                 present=np.stack([v[1] for v in samples.values()]))


class Skeletons(Dataset):
    """Samples for the tokenizer: joints [M, T, V, 3], present [M], y (class index, -1 if unknown).
    ``actions`` maps action numbers to class indices; training samples are randomly rotated."""

    def __init__(self, samples: list[dict], cfg: SkeletonDataConfig, train: bool, actions: list[int], seed: int = 0):
        self.samples, self.cfg, self.train, self.actions = samples, cfg, train, actions
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def source(self, i: int) -> str:
        """The name of sample ``i`` (its file's stem, or array[row]; named in errors)."""
        return self.samples[i]["name"]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.samples[i]
        xyz = random_rotation(s["xyz"], self.rng, self.cfg.rotate) if self.train and self.cfg.rotate else s["xyz"]
        y = self.actions.index(s["action"]) if s["action"] in self.actions else -1
        return {"joints": torch.from_numpy(np.ascontiguousarray(xyz, np.float32)),
                "present": torch.from_numpy(s["present"]), "y": torch.tensor(y)}
