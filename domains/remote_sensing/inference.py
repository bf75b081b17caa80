"""Remote-sensing inference: a fine-tuned export loaded, and a whole scene mapped window by window into a
GeoTIFF of classes (and optionally probabilities) on the scene's own grid (a swath's: with ground control points)."""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from scimae.core.checkpoint import from_pretrained
from scimae.core.heads import FineTuner
from scimae.core.errors import DataError
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoWindows
from scimae.domains.remote_sensing.finetune import geo_finetuner, GeoTaskConfig
from scimae.domains.remote_sensing.io import Band, open_scene
from scimae.domains.remote_sensing.model import EXPORT_KEYS, export_layout, mae_from_config
from scimae.domains.remote_sensing.transforms import swath_gcps, to_sample

NODATA = 255  # the class map's value where the scene has no valid pixel
CACHE = 256 * 2 ** 20  # bytes of GDAL block cache while mapping: a row of tiles of the scene and of the maps


def load_model(folder) -> tuple[FineTuner, dict]:
    def build(c: dict) -> FineTuner:
        return geo_finetuner(mae_from_config(c).encoder, GeoTaskConfig(**c["task"]), len(c["classes"]))

    model, config = from_pretrained(folder, build, "remote_sensing", EXPORT_KEYS + ("task", "classes", "data_bands"))
    return model.eval(), config


def blend_weights(size: int) -> np.ndarray:
    """A tent that favours window centres where windows overlap: [size, size]."""
    ramp = 1.0 - np.abs(np.linspace(-1, 1, size)) + 1e-3
    return np.outer(ramp, ramp).astype(np.float32)


class _WindowRows(Dataset):
    """Rows of windows of one scene: item k reads the strip of ``size`` rows at ``rows[k]`` once and cuts the windows
    at ``cols`` from it -> the model's inputs [n_cols, ...] and the windows' pixel validity [n_cols, size, size]. Each
    DataLoader worker opens the scene itself."""

    def __init__(self, windows: GeoWindows, rows: list[int], cols: list[int]):
        self.windows, self.rows, self.cols, self._scene = windows, rows, np.asarray(cols), None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        w = self.windows
        if self._scene is None:
            self._scene = open_scene(w.paths[0], w.cfg.bands, w.ref_crs, w.cfg.cloud_mask)
        size = w.cfg.window
        x, valid = self._scene.read(self.rows[k], 0, size, max(self._scene.width, size))  # [Nb, size, W]
        idx = self.cols[:, None] + np.arange(size)  # [n_cols, size]
        x, valid = (np.moveaxis(a[:, :, idx], 2, 0) for a in (x, valid))  # [n_cols, Nb, size, size]
        sample = w.to_slots(to_sample(x, valid, w.mean, w.std, w.cfg.patch, w.cfg.min_valid))
        return {**sample, "pixel_valid": torch.from_numpy(valid.any(1))}


@torch.no_grad()
def predict_scene(model: FineTuner, config: dict, path: Path, out: Path, overlap: float = 0.25,
                  probabilities: bool = False, batch_size: int = 64, workers: int | None = None) -> Path:
    """Map ``path`` into ``out`` (and ``<out>_probabilities.tif``): overlapping windows, read a row of windows at a
    time in ``workers`` DataLoader processes (default: the cores, at most 4) while the model runs, blended into a
    band of rows that is written out as soon as no later window reaches it, so memory does not grow with the scene."""
    import rasterio

    bands = [Band(**b) for b in config["data_bands"]]
    cfg = GeoDataConfig(root=str(path), bands=bands, window=config["window"], patch=config["patch"])
    windows = GeoWindows([path], cfg, train=False, layout=export_layout(config))
    scene = open_scene(path, bands)
    size, K = cfg.window, len(config["classes"])
    stride = max(1, int(size * (1 - overlap)))
    rows, cols = window_starts(scene.height, size, stride), window_starts(scene.width, size, stride)
    workers = min(4, len(os.sched_getaffinity(0))) if workers is None else workers
    loader = DataLoader(_WindowRows(windows, rows, cols), batch_size=None, num_workers=workers)
    profile = dict(driver="GTiff", width=scene.width, height=scene.height, crs=scene.crs, transform=scene.transform,
                   count=1, dtype="uint8", nodata=NODATA, tiled=True, blockxsize=256, blockysize=256)
    targets = [out] + ([out.with_name(out.stem + "_probabilities.tif")] if probabilities else [])
    partial = [t.with_name(t.stem + ".partial.tif") for t in targets]  # renamed onto the targets when complete
    out.parent.mkdir(parents=True, exist_ok=True)
    weight = blend_weights(size)
    band = _RowBand(K, size + stride, scene.width)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=CACHE))  # GDAL's block cache, not 5% of RAM per process
        dst = stack.enter_context(rasterio.open(partial[0], "w", **profile))
        pdst = stack.enter_context(rasterio.open(partial[1], "w", **{**profile, "count": K, "dtype": "float32",
                                                                     "nodata": -1.0})) if probabilities else None
        for r, strip in zip(rows, loader):  # row-major: a row of windows finishes the rows above it
            band.flush_to(r, dst, pdst)
            for i in range(0, len(cols), batch_size):
                logits = model({k: v[i:i + batch_size] for k, v in strip.items()})
                if logits.ndim == 2:  # a scene classifier paints its class over each window
                    logits = logits[:, :, None, None].expand(-1, -1, size, size)
                probs = logits.softmax(1).numpy()  # [b, K, size, size]
                for c, p, v in zip(cols[i:i + batch_size], probs, strip["pixel_valid"][i:i + batch_size].numpy()):
                    h, w = min(size, scene.height - r), min(size, scene.width - c)  # a loop over windows, to blend
                    band.add(r, c, p[:, :h, :w] * weight[:h, :w], weight[:h, :w], v[:h, :w])
        band.flush_to(scene.height, dst, pdst)
        for d, names in ((dst, ("class",)), (pdst, tuple(config["classes"]))):
            if d is not None:
                d.descriptions = names
                d.update_tags(classes=",".join(config["classes"]))
                georeference(d, scene)
    if not band.any_seen:
        for f in partial:
            f.unlink()
        raise DataError(path, "no valid pixel (entirely nodata)", "a scene with data to predict")
    for f, t in zip(partial, targets):
        f.replace(t)
    return out


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Where windows of ``size`` start along an axis of ``length``, every ``stride``, the last one flush with the end."""
    starts = list(range(0, max(length - size, 0) + 1, stride))
    return starts + ([length - size] if starts[-1] + size < length else [])


class _RowBand:
    """Blended class scores of the rows [top, top + height) of a scene, written to the class (and probability) map
    as they become final."""

    def __init__(self, K: int, height: int, width: int):
        self.acc = np.zeros((K + 1, height, width), np.float32)  # [K scores + weight, rows, cols]
        self.seen = np.zeros((height, width), bool)
        self.top, self.any_seen = 0, False

    def add(self, row: int, col: int, scores: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> None:
        r, (h, w) = row - self.top, weight.shape
        self.acc[:-1, r:r + h, col:col + w] += scores
        self.acc[-1, r:r + h, col:col + w] += weight
        self.seen[r:r + h, col:col + w] |= valid

    def flush_to(self, row: int, dst, pdst) -> None:
        """Write the rows above ``row`` (no later window reaches them) and move the band down to start there."""
        n = min(row - self.top, self.acc.shape[1])
        if n <= 0:
            return
        a, seen = self.acc[:, :n], self.seen[:n]
        self.any_seen |= bool(seen.any())
        window = ((self.top, self.top + n), (0, a.shape[2]))
        dst.write(np.where(seen, a[:-1].argmax(0), NODATA).astype(np.uint8)[None], window=window)
        if pdst is not None:
            pdst.write(np.where(seen, a[:-1] / np.maximum(a[-1], 1e-6), -1.0).astype(np.float32), window=window)
        self.acc = np.roll(self.acc, -n, axis=1)
        self.seen = np.roll(self.seen, -n, axis=0)
        self.acc[:, -n:], self.seen[-n:] = 0.0, False
        self.top += n


def georeference(dst, scene, every: int | None = None) -> None:
    """A swath (sensor geometry, no CRS) gives the written map ground control points from its 5 km latitude and
    longitude (every ``every``-th sample per axis, default about 20 per axis, in EPSG:4326), which GDAL and
    rasterio's warp use to place it."""
    if getattr(scene, "latitude", None) is None:
        return
    from rasterio.crs import CRS

    every = every or max(1, max(scene.latitude.shape) // 20)
    dst.gcps = (swath_gcps(scene.latitude, scene.longitude, every), CRS.from_epsg(4326))
