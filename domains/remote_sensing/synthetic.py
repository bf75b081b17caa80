"""A synthetic remote-sensing dataset whose scene classes differ in spatial layout, not in spectra.

Georeferenced 4-band GeoTIFF tiles (R, G, B, NIR, NAIP-like uint8) in the FireRisk folder layout
(tiles/<class>/*.tif), with label rasters of the land cover for segmentation, a nodata border on some tiles,
and a small MODIS-like 14-band NetCDF. Every tile holds the same land covers in the same shares (a quarter
water, a quarter crops, half forest): the covers are the quantiles of a random field whose shape is the
class (parallel field stripes, an orchard-like grid, rings around a pond, scattered blobs). So the per-band
statistics of a tile are the same for every class; only how the covers are arranged tells them apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scimae.core.files import build_folder_once
from scimae.core.progress import progress

VERSION = 3
COVERS = ["water", "crops", "forest"]
SHARES = np.array([0.25, 0.25, 0.5])  # of every tile, in COVERS order
#                       R    G    B   NIR  (uint8 digital numbers)
SIGNATURES = np.array([[30, 45, 60, 15],     # water: dark, darkest in NIR
                       [90, 120, 70, 150],   # crops
                       [40, 80, 45, 190]], np.float32)  # forest: green, very bright NIR
CLASSES = ["stripes", "grid", "rings", "blobs"]  # the scene classes: layouts of the same covers
TILE = 32  # one model window: the shares hold exactly in what the model reads
MODIS_BANDS = [f"b{i:02d}" for i in range(1, 15)]


def layout_field(rng: np.random.Generator, size: int, layout: str) -> np.ndarray:
    """A random field [size, size] with the shape of ``layout`` (orientation, scale and position drawn)."""
    yy, xx = np.mgrid[:size, :size] / size
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    k = rng.uniform(2.0, 3.5)  # repetitions across the tile
    if layout == "stripes":
        return np.sin(2 * np.pi * k * u + phase)
    if layout == "grid":
        return np.sin(2 * np.pi * k * u + phase) * np.sin(2 * np.pi * k * v + rng.uniform(0, 2 * np.pi))
    if layout == "rings":
        cy, cx = rng.uniform(0.3, 0.7, 2)
        return -np.cos(2 * np.pi * 1.5 * np.hypot(yy - cy, xx - cx) + phase / 4)
    if layout == "blobs":
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(rng.standard_normal((size, size)), sigma=size / (4 * k), mode="wrap")
    raise ValueError(f"unknown layout {layout!r}; expected one of {CLASSES}")


def land_cover(rng: np.random.Generator, size: int, layout: str, valid: np.ndarray | None = None) -> np.ndarray:
    """A cover map [size, size] (indices into COVERS) arranged as the quantiles of ``layout``'s field, with
    exactly SHARES of each cover among the ``valid`` pixels (default: all)."""
    field = layout_field(rng, size, layout)
    valid = np.ones((size, size), bool) if valid is None else valid
    cover = np.zeros((size, size), np.uint8)
    order = np.argsort(field[valid] + rng.normal(0, 1e-6, int(valid.sum())), kind="stable")
    bounds = np.round(np.cumsum(SHARES) * len(order)).astype(int)
    ranked = np.empty(len(order), np.uint8)
    for c, (lo, hi) in enumerate(zip(np.r_[0, bounds[:-1]], bounds)):
        ranked[order[lo:hi]] = c
    cover[valid] = ranked
    return cover


def write_dataset(root: str | Path | None = None, n_tiles: int = 60, seed: int = 0) -> Path:
    """Write once (complete or not at all) and return the folder: tiles/<class>/*.tif, labels/*.tif, modis.nc."""
    key = f"{n_tiles} tiles, seed {seed}"
    return build_folder_once(root, key, lambda tmp: _write(tmp, n_tiles, seed), f"geo_synthetic_v{VERSION}")


def _write(tmp: Path, n_tiles: int, seed: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    for i in progress(range(n_tiles), "writing synthetic GeoTIFF tiles"):
        cls = CLASSES[i % len(CLASSES)]
        valid = np.ones((TILE, TILE), bool)
        if i % 5 == 4:  # a nodata border, as at a scene edge
            valid[:, : int(rng.integers(TILE // 8, TILE // 3))] = False
        cover = land_cover(rng, TILE, cls, valid)
        image = SIGNATURES[cover].transpose(2, 0, 1)  # [4, H, W]
        image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 6, image.shape)  # illumination, texture
        image = np.where(valid, np.clip(image, 1, 255), 0).astype(np.uint8)  # 0 is nodata
        transform = from_origin(500000 + 1000 * (i % 10), 4500000 - 1000 * (i // 10), 1.0, 1.0)  # UTM 14N, 1 m
        profile = dict(driver="GTiff", width=TILE, height=TILE, crs="EPSG:32614", transform=transform, nodata=0)
        (tmp / "tiles" / cls).mkdir(parents=True, exist_ok=True)
        (tmp / "labels").mkdir(parents=True, exist_ok=True)
        with rasterio.open(tmp / "tiles" / cls / f"tile_{i:03d}.tif", "w", count=4, dtype="uint8", **profile) as dst:
            dst.write(image)
            dst.descriptions = ("R", "G", "B", "NIR")
        with rasterio.open(tmp / "labels" / f"tile_{i:03d}.tif", "w", count=1, dtype="uint8",
                           **{**profile, "nodata": 255}) as dst:
            dst.write(np.where(image[0] > 0, cover, 255)[None].astype(np.uint8))
    write_modis(tmp / "modis.nc", rng)


def write_modis(path: Path, rng: np.random.Generator, size: int = 64) -> None:
    """A 14-band top-of-atmosphere stack: reflectance bands and brightness-temperature bands as scaled
    int16 with a fill value (decoded by xarray)."""
    import xarray as xr

    cover = land_cover(rng, size, "blobs")
    refl = SIGNATURES[cover].transpose(2, 0, 1) / 255.0  # [4, H, W]
    bands = []
    for b in range(14):
        if b < 7:  # reflectance-like: mixtures of the four signatures
            w = rng.dirichlet(np.ones(4))
            bands.append(np.tensordot(w, refl, 1) + rng.normal(0, 0.01, (size, size)))
        else:  # brightness temperature (K): warm land, cool water
            bands.append(290 + 15 * (cover != 0) - 4 * (cover == 2) + rng.normal(0, 0.5, (size, size)))
    data = np.stack(bands).astype(np.float32)
    data[:, :4, :4] = np.nan  # a missing corner
    da = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": MODIS_BANDS}, name="toa",
                      attrs={"crs": "+proj=sinu +R=6371007.181 +units=m"})
    da.to_netcdf(path, encoding={"toa": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 150.0,
                                         "_FillValue": -32768}})
