"""Windows of scenes as a dataset: random windows for training, a regular grid for evaluation."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scimae.core.config import AT_LEAST_1, UNIT_INTERVAL, check_ranges
from scimae.core.data import SyntheticBase, seeded_split
from scimae.core.errors import DataError
from scimae.core.files import find_files
from scimae.core.preflight import ON_ERROR_RULE, preflight
from scimae.domains.remote_sensing import synthetic
from scimae.domains.remote_sensing.io import Band, RasterScene, check_scene, open_scene
from scimae.domains.remote_sensing.transforms import to_sample, window_transform

log = logging.getLogger(__name__)


def _naip_bands() -> list[Band]:
    return [Band(n, "reflectance", 100.0, 55.0) for n in ("R", "G", "B", "NIR")]


@dataclass
class SyntheticConfig(SyntheticBase):
    tiles: int = 60  # tiles to generate

    def write(self) -> Path:
        return synthetic.write_dataset(self.folder, self.tiles, self.seed)


@dataclass
class GeoDataConfig:
    root: str | None = None  # GeoTIFFs under a folder, one per-band folder, or a NetCDF/zarr stack
    bands: list[Band] = field(default_factory=_naip_bands)  # the band table: name, kind, mean, std
    groups: dict[str, list[str]] | None = None  # spectral groups, e.g. {visible: [R, G, B], nir: [NIR]}; default: one per band
    window: int = 32  # pixels per side of a sample
    patch: int = 8  # patch size in pixels (one token per patch and band group)
    windows_per_scene: int | None = None  # random training windows per scene and epoch; None: the scene's area in windows
    min_valid: float = 0.5  # a patch with less valid data than this is invalid
    val_fraction: float = 0.2  # share of scenes held out for validation
    split_seed: int = 0  # seed of the train/validation split
    cloud_mask: bool = False  # MODIS granules: pixels their state_1km QC flags cloudy or shadowed are invalid
    on_error: str = "stop"  # a bad scene stops the run (every one named at once), or skip: train on the rest
    val_root: str | None = None  # validation scenes in their own folder (then root is all training, no split)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        check_ranges("data", self, {"window": AT_LEAST_1, "patch": AT_LEAST_1, "val_fraction": UNIT_INTERVAL,
                                    "min_valid": ("in [0, 1]", lambda v: 0 <= v <= 1),
                                    "on_error": ON_ERROR_RULE,
                                    "windows_per_scene": (">= 1 or null (the scene's area)", lambda v: v is None or v >= 1)})
        if self.window % self.patch:
            raise ValueError(f"data.patch {self.patch} must divide data.window {self.window}")
        if not self.bands:
            raise ValueError("data.bands must name at least one band")
        if self.groups is not None:
            band_layout([b.name for b in self.bands], self.groups)


def band_layout(bands: list[str], groups: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The model's token groups: group name -> its bands (each band in exactly one group); default one group
    per band. Groups of fewer bands than the largest leave their last channels empty."""
    if groups is None:
        return {b: [b] for b in bands}
    listed = [b for members in groups.values() for b in members]
    if sorted(listed) != sorted(bands) or not all(groups.values()):
        raise ValueError(f"data.groups {groups} must put each band of {bands} in exactly one non-empty group")
    return {str(g): list(members) for g, members in groups.items()}


def layout_bands(layout: dict[str, list[str]]) -> list[str]:
    return [b for members in layout.values() for b in members]


def scene_paths(cfg: GeoDataConfig) -> list[Path]:
    """The scenes: the synthetic tiles, or every GeoTIFF / stack / HDF4-EOS granule under ``root`` (or ``root``)."""
    if cfg.root is None:  # the synthetic tiles, or its MODIS granules for their band tables
        root = cfg.synthetic.write()
        if [b.name for b in cfg.bands] == synthetic.MODIS_BANDS:
            return sorted((root / "mod021km").glob("*.hdf"))
        if {b.name for b in cfg.bands} <= set(synthetic.MOD09GA_BANDS):
            return sorted((root / "mod09ga").glob("*.hdf"))
        return sorted((root / "tiles").rglob("*.tif"))
    root = Path(cfg.root)
    if root.is_file() or root.suffix in (".nc", ".zarr"):
        return [root]
    if not root.is_dir():
        raise DataError(root, "no such file or folder", "GeoTIFFs, a per-band folder, a NetCDF/zarr stack or .hdf granules")
    files = find_files(root, lambda p: p.suffix.lower() in (".tif", ".tiff", ".nc", ".hdf"))
    if not files:
        raise DataError(root, "no .tif, .tiff, .nc or .hdf files", "rasters to train on")
    return files


class GeoWindows(Dataset):
    """Samples of ``window`` x ``window`` pixels in the model's band ``layout`` (default: the config's):
    image [G, C, w, w] normalised (0 where invalid or absent), present [G] (a group with none of its bands
    in the data is absent), patch_valid [G, w/p, w/p] (valid in every band of the group the data has).
    Training windows are random and may run past the scene's edge (padding is invalid); windows with no
    valid pixel are redrawn and counted in ``skipped``."""

    def __init__(self, paths: list[Path], cfg: GeoDataConfig, train: bool, seed: int = 0,
                 layout: dict[str, list[str]] | None = None, crs=None):
        self.paths, self.cfg, self.train, self.ref_crs = paths, cfg, train, crs
        names = [b.name for b in cfg.bands]
        self.layout = layout or band_layout(names, cfg.groups)
        slot = {b: (g, c) for g, members in enumerate(self.layout.values()) for c, b in enumerate(members)}
        unknown = [n for n in names if n not in slot]
        if unknown:
            raise DataError(paths[0] if paths else "data", f"bands {unknown} the model was not trained on",
                            f"bands among {layout_bands(self.layout)}")
        self.shape = (len(self.layout), max(map(len, self.layout.values())))  # (G, C)
        self.slots = [slot[n] for n in names]
        self.mean = np.array([b.mean for b in cfg.bands], np.float32)[:, None, None]
        self.std = np.array([b.std for b in cfg.bands], np.float32)[:, None, None]
        self.rng = np.random.default_rng(seed)
        self.skipped = 0
        self._scenes: dict[int, object] = {}
        if not train:
            for k in range(len(paths)):  # each scene's grid and CRS checked before the first step
                self.scene(k)
        counts = [self._windows(k) for k in range(len(paths))] if train else [1] * len(paths)
        self._scenes = {}  # opened again lazily in each DataLoader worker
        self.starts = np.cumsum([0] + counts)  # [S + 1]: the first sample index of each scene, then the total

    @property
    def crs(self):
        """The dataset's CRS (the one it was given, else its first scene's); GeoTIFFs in another are reprojected."""
        return self.ref_crs or (self.scene(0).crs if self.paths else None)

    def scene(self, i: int):
        if i not in self._scenes:  # opened lazily, so each DataLoader worker has its own handles
            first = self.scene(0) if i and self.ref_crs is None else None
            crs = self.ref_crs or (first.crs if isinstance(first, RasterScene) else None)  # stacks keep their own grid
            self._scenes[i] = open_scene(self.paths[i], self.cfg.bands, crs, self.cfg.cloud_mask)
        return self._scenes[i]

    def to_slots(self, sample: dict) -> dict[str, torch.Tensor]:
        """Per-band image [..., Nb, 1, w, w] and patch_valid [..., Nb, w/p, w/p] -> the model's group slots: image
        [..., G, C, w, w], present [..., G], patch_valid [..., G, w/p, w/p]."""
        G, C = self.shape
        *lead, _, _, h, w = sample["image"].shape
        image = sample["image"].new_zeros((*lead, G, C, h, w))
        present = torch.zeros(G, dtype=torch.bool)
        patch_valid = torch.ones((*lead, G, *sample["patch_valid"].shape[-2:]), dtype=torch.bool)
        for i, (g, c) in enumerate(self.slots):  # a handful of bands
            image[..., g, c, :, :] = sample["image"][..., i, 0, :, :]
            present[g] = True
            patch_valid[..., g, :, :] &= sample["patch_valid"][..., i, :, :]
        return {"image": image, "present": present.expand(*lead, G).clone(),
                "patch_valid": patch_valid & present[:, None, None]}

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._scenes = {}

    def _windows(self, k: int) -> int:
        """Training windows of scene ``k`` per epoch: the configured number, or as many as fit in its area."""
        if self.cfg.windows_per_scene is not None:
            return self.cfg.windows_per_scene
        scene = self.scene(k)
        return max(1, scene.height * scene.width // self.cfg.window ** 2)

    def scene_index(self, i: int) -> int:
        """The scene sample ``i`` is drawn from."""
        return int(np.searchsorted(self.starts, i, side="right")) - 1

    def __len__(self) -> int:
        return int(self.starts[-1])

    def source(self, i: int) -> str:
        """The scene sample ``i`` is drawn from (named in errors)."""
        return str(self.paths[self.scene_index(i)])

    def _origin(self, scene) -> tuple[int, int]:
        w = self.cfg.window
        if not self.train:  # evaluation: the window at the scene's centre
            return (scene.height - w) // 2, (scene.width - w) // 2
        return (int(self.rng.integers(-w // 4, max(scene.height - 3 * w // 4, -w // 4 + 1))),
                int(self.rng.integers(-w // 4, max(scene.width - 3 * w // 4, -w // 4 + 1))))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        scene = self.scene(self.scene_index(i))
        for _ in range(100):
            row, col = self._origin(scene)
            sample, _ = self.read_sample(scene, row, col)
            if sample["patch_valid"].any() or not self.train:
                return sample
            self.skipped += 1
        raise DataError(scene.name, "no valid patch in 100 random windows", "a scene with data")

    def read_sample(self, scene, row: int, col: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The model's inputs for one window (with its georeference) and the window's pixel validity."""
        x, valid = scene.read(row, col, self.cfg.window)
        sample = self.to_slots(to_sample(x, valid, self.mean, self.std, self.cfg.patch, self.cfg.min_valid))
        return {**sample, "transform": window_transform(scene, row, col)}, valid


def load_splits(cfg: GeoDataConfig, seed: int = 0):
    check = partial(check_scene, bands=cfg.bands, cloud_mask=cfg.cloud_mask)
    paths = preflight(scene_paths(cfg), check, "scenes", cfg.on_error)
    train, val = seeded_split(paths, cfg.val_fraction, cfg.split_seed)
    log.info("%d training scenes, %d validation scenes", len(train), len(val))
    first = open_scene(paths[0], cfg.bands)
    crs = first.crs if isinstance(first, RasterScene) else None  # both splits on the first scene's CRS
    return GeoWindows(train, cfg, True, seed, crs=crs), (GeoWindows(val, cfg, False, seed, crs=crs) if val else None)


def label_path(image: Path, labels_root: Path) -> Path:
    path = Path(labels_root) / image.name
    if not path.is_file():
        raise DataError(image, f"no label raster {path}", "a label raster with the same name in the labels folder")
    return path


class GeoTasks(GeoWindows):
    """GeoWindows with targets: ``y`` per tile (classification) or ``seg`` [w, w] per pixel (255 = ignore)."""

    def __init__(self, paths: list[Path], cfg: GeoDataConfig, train: bool, seed: int = 0,
                 layout: dict[str, list[str]] | None = None, classes: list[int] | None = None,
                 labels_root: Path | None = None):
        super().__init__(paths, cfg, train, seed, layout)
        self.classes, self.labels_root = classes, labels_root
        if labels_root is not None:
            for p in paths:
                check_label_grid(p, label_path(p, labels_root))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = self.scene_index(i)
        scene = self.scene(k)
        row, col = self._origin(scene)
        sample, valid = self.read_sample(scene, row, col)
        if self.classes is not None:
            sample["y"] = torch.tensor(self.classes[k])
        if self.labels_root is not None:
            seg, ok = open_scene(label_path(self.paths[k], self.labels_root), [Band("label")]).read(row, col, self.cfg.window)
            sample["seg"] = torch.from_numpy(np.where(ok[0] & valid.all(0), seg[0], 255).astype(np.int64))
        return sample


def check_label_grid(image: Path, label: Path) -> None:
    import rasterio

    with rasterio.open(image) as a, rasterio.open(label) as b:
        if (a.crs, a.transform, a.shape) != (b.crs, b.transform, b.shape):
            raise DataError(label, f"a grid {b.shape} {b.crs} {tuple(b.transform)[:6]}",
                            f"the grid of {image.name}: {a.shape} {a.crs} {tuple(a.transform)[:6]}")
