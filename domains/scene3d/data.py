"""Datasets of point clouds (class folders, flat folders, HDF5 files) and of NeRF radiance grids."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scimae.core.config import AT_LEAST_1, POSITIVE, UNIT_INTERVAL, check_ranges
from scimae.core.data import SyntheticBase
from scimae.core.errors import DataError
from scimae.core.files import find_files
from scimae.core.preflight import ON_ERROR_RULE, preflight
from scimae.domains.scene3d import synthetic
from scimae.domains.scene3d.io import CLOUD_SUFFIXES, MESH_SUFFIXES, read_cloud, read_grid, read_h5
from scimae.domains.scene3d.transforms import (augment, check_count, cloud_centres, density_to_opacity, fit_grid,
                                               has_open3d, normalize_unit_sphere, resample)

log = logging.getLogger(__name__)
IGNORE = 255  # voxel label for padding


@dataclass
class SyntheticConfig(SyntheticBase):
    per_class: int = 30  # shapes to generate per class
    rooms: int = 48  # NeRF room grids to generate

    def write(self) -> Path:
        return synthetic.write_dataset(self.folder, self.per_class, self.rooms, self.seed)


@dataclass
class PointDataConfig:
    root: str | None = None  # class folders of clouds/meshes, a flat folder, or an HDF5 file
    n_points: int = 1024  # points per cloud after resampling
    n_groups: int = 64  # FPS centres
    group_size: int = 32  # kNN points per group
    min_points: int = 64  # fewer points than this is an error; fewer than n_points is resampled with a warning
    mesh_points: int = 8192  # points sampled from a mesh before resampling
    rotation: str | None = "z"  # training augmentation: z, so3 or null
    val_fraction: float = 0.2  # share of samples held out for validation
    split_seed: int = 0  # seed of the train/validation split
    val_root: str | None = None  # validation clouds in their own folder (then nothing is split off the root)
    on_error: str = "stop"  # a bad file stops the run (every one named at once), or skip: train on the rest
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        check_ranges("data", self, {**dict.fromkeys(("n_points", "n_groups", "group_size"), AT_LEAST_1),
                                    "val_fraction": UNIT_INTERVAL, "on_error": ON_ERROR_RULE})
        if not self.group_size <= self.n_points or not self.n_groups <= self.n_points:
            raise ValueError(f"data.n_points {self.n_points} must be >= group_size {self.group_size} and "
                             f">= n_groups {self.n_groups}")
        self.min_points = max(self.min_points, self.group_size)


@dataclass
class Entry:
    path: Path
    index: int | None = None  # the cloud's row in an HDF5 file
    label: int = -1  # -1 = unlabelled


def find_clouds(root: Path, on_error: str = "stop") -> tuple[list[Entry], list[str]]:
    """Clouds under ``root`` -> (entries, class names). Class subfolders label their files (ModelNet
    layout); HDF5 files carry their own ``label``; files directly under ``root`` are unlabelled. Every
    cloud file is read once first (:func:`preflight`, with ``on_error``)."""
    root = Path(root)
    suffixes = CLOUD_SUFFIXES + MESH_SUFFIXES + (".npy",)
    if root.is_file():
        files, classes = [root], []
    elif root.is_dir():
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = find_files(root, lambda p: p.suffix.lower() in suffixes + (".h5", ".hdf5"))
    else:
        raise DataError(root, "no such file or folder", "point-cloud files, class folders of them, or an HDF5 file")
    h5 = [f for f in files if f.suffix.lower() in (".h5", ".hdf5")]  # read whole below
    clouds = [f for f in files if f not in h5]
    good = set(preflight(clouds, read_cloud, "point-cloud files", on_error)) if clouds else set()
    files = [f for f in files if f in good or f in h5]
    entries = []
    for f in files:
        if f.suffix.lower() in (".h5", ".hdf5"):
            data, labels = read_h5(f)
            entries += [Entry(f, i, int(labels[i]) if labels is not None else -1) for i in range(len(data))]
        else:
            cls = f.relative_to(root).parts[0] if f.parent != root and root.is_dir() else None
            entries.append(Entry(f, None, classes.index(cls) if cls in classes else -1))
    if not entries:
        raise DataError(root, "no point-cloud files", f"files ending in {', '.join(suffixes + ('.h5',))}")
    return entries, classes


def cloud_root(cfg: PointDataConfig) -> Path:
    """The clouds' folder: the user's, or the synthetic dataset's shapes."""
    return Path(cfg.root) if cfg.root else cfg.synthetic.write() / "shapes"


class PointClouds(Dataset):
    """Clouds normalised to the unit sphere and resampled to ``n_points``: points [n, 3], y (label or -1) and,
    where open3d is installed, centres [n_groups] (FPS indices). Training samples are augmented (rotation, scale,
    shift) and drawn afresh each epoch."""

    def __init__(self, entries: list[Entry], cfg: PointDataConfig, train: bool, seed: int = 0):
        self.entries, self.cfg, self.train = entries, cfg, train
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, np.ndarray] = {}
        self._h5: dict[Path, np.ndarray] = {}
        self.dropped = 0  # non-finite points dropped on reading
        self.open3d = has_open3d()  # FPS per cloud here (open3d) rather than per batch in the step (torch)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.entries)

    def source(self, i: int) -> str:
        """The file (and row) of cloud ``i`` (named in errors)."""
        e = self.entries[i]
        return str(e.path) if e.index is None else f"{e.path}[{e.index}]"

    def cloud(self, i: int) -> np.ndarray:
        """The i-th cloud, normalised: [N, 3] (read once, then kept)."""
        if i not in self._cache:
            e = self.entries[i]
            if e.index is None:
                c = read_cloud(e.path, self.cfg.mesh_points)
                points, self.dropped = c.points, self.dropped + c.dropped
            else:
                if e.path not in self._h5:
                    self._h5[e.path] = read_h5(e.path)[0]
                points = self._h5[e.path][e.index]
                ok = np.isfinite(points).all(1)
                if not ok.any():
                    raise DataError(f"{e.path}[{e.index}]", "a cloud with no finite point", "finite coordinates")
                points, self.dropped = points[ok], self.dropped + int((~ok).sum())
            name = e.path if e.index is None else f"{e.path}[{e.index}]"
            check_count(len(points), self.cfg.n_points, self.cfg.min_points, name)  # once per cloud
            self._cache[i] = normalize_unit_sphere(points)
        return self._cache[i]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e = self.entries[i]
        rng = self.rng if self.train else np.random.default_rng(i)  # evaluation: the same points every time
        points = resample(self.cloud(i), self.cfg.n_points, rng)
        if self.train:
            points = augment(points, rng, self.cfg.rotation)
        points = np.ascontiguousarray(points, np.float32)
        sample = {"points": torch.from_numpy(points), "y": torch.tensor(e.label)}
        if self.open3d:  # the FPS centres, here where the workers overlap it with the step
            sample["centres"] = torch.from_numpy(cloud_centres(points, self.cfg.n_groups))
        return sample


@dataclass
class NerfDataConfig:
    root: str | None = None  # a folder of .npz grids (NeRF-RPN / NeRF-MAE layout)
    grid: tuple[int, int, int] = (32, 32, 32)  # grids are cropped or padded (as invalid) to this size
    patch: int = 4  # voxels per patch side (4 or 8)
    opacity: str = "alpha"  # density -> opacity: alpha (1 - exp(-sigma * delta)) or clip
    delta: float = 0.1  # voxel step length for the alpha rule
    min_valid: float = 0.5  # a patch with less non-padding than this is invalid
    val_fraction: float = 0.2  # share of samples held out for validation
    split_seed: int = 0  # seed of the train/validation split
    on_error: str = "stop"  # a bad grid stops the run (every one named at once), or skip: train on the rest
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        check_ranges("data", self, {"patch": AT_LEAST_1, "on_error": ON_ERROR_RULE,
                                    "grid": ("three sizes >= 1", lambda v: len(v) == 3 and min(v) >= 1),
                                    "delta": POSITIVE, "val_fraction": UNIT_INTERVAL})
        if any(g % self.patch for g in self.grid):
            raise ValueError(f"data.patch {self.patch} must divide data.grid {tuple(self.grid)}")


def grid_paths(cfg: NerfDataConfig) -> list[Path]:
    """The grids (each read once first: :func:`preflight`)."""
    if cfg.root is None:
        paths = sorted((cfg.synthetic.write() / "rooms").glob("*.npz"))
    else:
        root = Path(cfg.root)
        paths = [root] if root.is_file() else find_files(root, lambda p: p.suffix == ".npz") if root.is_dir() else []
        if not paths:
            raise DataError(root, "no .npz grids", "a folder of .npz files with 'rgbsigma' arrays")
    return preflight(paths, read_grid, "grids", cfg.on_error)


class NerfGrids(Dataset):
    """Radiance grids as GridTokenizer inputs: image [1, 4, W, L, H] (RGB, opacity), present [1],
    patch_valid [1, w, l, h] (padding patches invalid) and labels [W, L, H] (255 = padding or unlabelled)."""

    def __init__(self, paths: list[Path], cfg: NerfDataConfig):
        self.paths, self.cfg = paths, cfg

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, i: int) -> str:
        """The grid file of sample ``i`` (named in errors)."""
        return str(self.paths[i])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        cfg, size = self.cfg, tuple(self.cfg.grid)
        g = read_grid(self.paths[i])
        rgba = g["rgbsigma"].copy()
        rgba[..., 3] = density_to_opacity(rgba[..., 3], cfg.opacity, cfg.delta)
        mask = fit_grid(g["mask"], size, False)
        rgba = fit_grid(rgba, size) * mask[..., None]
        labels = np.where(mask, fit_grid(g["labels"], size, IGNORE), IGNORE) if "labels" in g else np.full(size, IGNORE)
        p = cfg.patch
        coarse = [s // p for s in size]
        valid = mask.reshape(coarse[0], p, coarse[1], p, coarse[2], p).mean((1, 3, 5)) >= cfg.min_valid
        if not valid.any():
            raise DataError(self.paths[i], f"no patch of {p}^3 voxels with a share of at least {cfg.min_valid} inside "
                                           f"the scene's mask", "a grid whose mask covers some patches")
        return {"image": torch.from_numpy(np.ascontiguousarray(rgba.transpose(3, 0, 1, 2)))[None],
                "present": torch.ones(1, dtype=torch.bool), "patch_valid": torch.from_numpy(valid)[None],
                "labels": torch.from_numpy(labels.astype(np.int64))}
