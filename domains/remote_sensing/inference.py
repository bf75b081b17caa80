"""Remote-sensing inference: a fine-tuned export loaded, and a whole scene mapped window by window into a
GeoTIFF of classes (and optionally probabilities) on the scene's own grid (a swath's: with ground control points)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from scimae.core.checkpoint import from_pretrained
from scimae.core.heads import FineTuner
from scimae.core.errors import DataError
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoWindows
from scimae.domains.remote_sensing.finetune import geo_finetuner, GeoTaskConfig
from scimae.domains.remote_sensing.io import Band
from scimae.domains.remote_sensing.model import EXPORT_KEYS, export_layout, mae_from_config
from scimae.domains.remote_sensing.transforms import swath_gcps

NODATA = 255  # the class map's value where the scene has no valid pixel


def load_model(folder) -> tuple[FineTuner, dict]:
    def build(c: dict) -> FineTuner:
        return geo_finetuner(mae_from_config(c).encoder, GeoTaskConfig(**c["task"]), len(c["classes"]))

    model, config = from_pretrained(folder, build, "remote_sensing", EXPORT_KEYS + ("task", "classes", "data_bands"))
    return model.eval(), config


def blend_weights(size: int) -> np.ndarray:
    """A tent that favours window centres where windows overlap: [size, size]."""
    ramp = 1.0 - np.abs(np.linspace(-1, 1, size)) + 1e-3
    return np.outer(ramp, ramp).astype(np.float32)


@torch.no_grad()
def predict_scene(model: FineTuner, config: dict, path: Path, out: Path, overlap: float = 0.25,
                  probabilities: bool = False, batch_size: int = 16) -> Path:
    import rasterio

    bands = [Band(**b) for b in config["data_bands"]]
    cfg = GeoDataConfig(root=str(path), bands=bands, window=config["window"], patch=config["patch"])
    windows = GeoWindows([path], cfg, train=False, layout=export_layout(config))
    scene = windows.scene(0)
    size, K = cfg.window, len(config["classes"])
    stride = max(1, int(size * (1 - overlap)))
    rows = list(range(0, max(scene.height - size, 0) + 1, stride))
    cols = list(range(0, max(scene.width - size, 0) + 1, stride))
    rows += [scene.height - size] if rows[-1] + size < scene.height else []
    cols += [scene.width - size] if cols[-1] + size < scene.width else []
    weight = blend_weights(size)
    with tempfile.TemporaryDirectory() as tmp:
        acc = np.lib.format.open_memmap(Path(tmp) / "acc.npy", "w+", np.float32, (K + 1, scene.height, scene.width))
        seen = np.lib.format.open_memmap(Path(tmp) / "seen.npy", "w+", np.bool_, (scene.height, scene.width))
        origins = [(r, c) for r in rows for c in cols]
        for start in range(0, len(origins), batch_size):
            chunk = origins[start:start + batch_size]
            reads = [windows.read_sample(scene, r, c) for r, c in chunk]
            batch = {k: torch.stack([s[k] for s, _ in reads]) for k in reads[0][0]}
            logits = model(batch)
            if logits.ndim == 2:  # a scene classifier paints its class over each window
                logits = logits[:, :, None, None].expand(-1, -1, size, size)
            probs = logits.softmax(1).numpy()  # [b, K, size, size]
            for (r, c), p, (_, v) in zip(chunk, probs, reads):  # v: the window's pixel validity
                h, w = min(size, scene.height - r), min(size, scene.width - c)
                acc[:K, r:r + h, c:c + w] += p[:, :h, :w] * weight[:h, :w]
                acc[K, r:r + h, c:c + w] += weight[:h, :w]
                seen[r:r + h, c:c + w] |= v.any(0)[:h, :w]
        if not seen.any():
            raise DataError(path, "no valid pixel (entirely nodata)", "a scene with data to predict")
        profile = dict(driver="GTiff", width=scene.width, height=scene.height, crs=scene.crs, transform=scene.transform,
                       count=1, dtype="uint8", nodata=NODATA, tiled=True, blockxsize=256, blockysize=256)
        out.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(out, "w", **profile) as dst:
            for r in range(0, scene.height, 256):  # written in strips, never the whole map at once
                a = acc[:, r:r + 256]
                classes = np.where(seen[r:r + 256], a[:K].argmax(0), NODATA).astype(np.uint8)
                dst.write(classes[None], window=((r, r + classes.shape[0]), (0, scene.width)))
            dst.descriptions = ("class",)
            dst.update_tags(classes=",".join(config["classes"]))
            georeference(dst, scene)
        if probabilities:
            with rasterio.open(out.with_name(out.stem + "_probabilities.tif"), "w",
                               **{**profile, "count": K, "dtype": "float32", "nodata": -1.0}) as dst:
                for r in range(0, scene.height, 256):
                    a = acc[:, r:r + 256]
                    p = np.where(seen[r:r + 256], a[:K] / np.maximum(a[K], 1e-6), -1.0).astype(np.float32)
                    dst.write(p, window=((r, r + p.shape[1]), (0, scene.width)))
                dst.descriptions = tuple(config["classes"])
                georeference(dst, scene)
    return out


def georeference(dst, scene, every: int | None = None) -> None:
    """A swath (sensor geometry, no CRS) gives the written map ground control points from its 5 km latitude and
    longitude (every ``every``-th sample per axis, default about 20 per axis, in EPSG:4326), which GDAL and
    rasterio's warp use to place it."""
    if getattr(scene, "latitude", None) is None:
        return
    from rasterio.crs import CRS

    every = every or max(1, max(scene.latitude.shape) // 20)
    dst.gcps = (swath_gcps(scene.latitude, scene.longitude, every), CRS.from_epsg(4326))
