"""A synthetic remote-sensing dataset: georeferenced 4-band GeoTIFF tiles (R, G, B, NIR, NAIP-like uint8)
with land-cover patches of distinct spectral signatures, a class per tile (the FireRisk folder layout),
label rasters for segmentation, a nodata border on some tiles, and a small MODIS-like 14-band NetCDF."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scimae.core.files import build_folder_once
from scimae.core.progress import progress

VERSION = 1
CLASSES = ["water", "forest", "crops", "bare_soil", "urban"]
#                       R    G    B   NIR  (uint8 digital numbers)
SIGNATURES = np.array([[30, 45, 60, 15],     # water: dark, darkest in NIR
                       [40, 80, 45, 190],    # forest: green, very bright NIR
                       [90, 120, 70, 150],   # crops
                       [150, 120, 95, 130],  # bare soil: red-brown
                       [170, 170, 175, 110]], np.float32)  # urban: bright grey
TILE = 64
MODIS_BANDS = [f"b{i:02d}" for i in range(1, 15)]


def land_cover(rng: np.random.Generator, size: int, dominant: int) -> np.ndarray:
    """A class map of Voronoi patches, most of them of the ``dominant`` class."""
    n = int(rng.integers(4, 9))
    seeds = rng.uniform(0, size, (n, 2))
    labels = np.where(rng.random(n) < 0.6, dominant, rng.integers(0, len(CLASSES), n))
    yy, xx = np.mgrid[:size, :size]
    d = (yy[None] - seeds[:, :1, None]) ** 2 + (xx[None] - seeds[:, 1:, None]) ** 2  # [n, size, size]
    return labels[d.argmin(0)].astype(np.uint8)


def write_dataset(root: str | Path | None = None, n_tiles: int = 60, seed: int = 0) -> Path:
    """Write once (complete or not at all) and return the folder: tiles/<class>/*.tif, labels/*.tif, modis.nc."""
    key = f"{n_tiles} tiles, seed {seed}"
    return build_folder_once(root, key, lambda tmp: _write(tmp, n_tiles, seed), f"geo_synthetic_v{VERSION}")


def _write(tmp: Path, n_tiles: int, seed: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    for i in progress(range(n_tiles), "writing synthetic GeoTIFF tiles"):
        dominant = i % len(CLASSES)
        cover = land_cover(rng, TILE, dominant)
        image = SIGNATURES[cover].transpose(2, 0, 1)  # [4, H, W]
        image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 6, image.shape)  # illumination, texture
        image = np.clip(image, 1, 255).astype(np.uint8)  # 0 is nodata
        if i % 5 == 4:  # a nodata border, as at a scene edge
            image[:, :, : int(rng.integers(8, 24))] = 0
        cls = CLASSES[int(np.bincount(cover[image[0] > 0].ravel(), minlength=len(CLASSES)).argmax())]
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

    cover = land_cover(rng, size, 1)
    refl = SIGNATURES[cover].transpose(2, 0, 1) / 255.0  # [4, H, W]
    bands = []
    for b in range(14):
        if b < 7:  # reflectance-like: mixtures of the four signatures
            w = rng.dirichlet(np.ones(4))
            bands.append(np.tensordot(w, refl, 1) + rng.normal(0, 0.01, (size, size)))
        else:  # brightness temperature (K): warm land, cool water
            bands.append(290 + 15 * (cover != 0) - 4 * (cover == 1) + rng.normal(0, 0.5, (size, size)))
    data = np.stack(bands).astype(np.float32)
    data[:, :4, :4] = np.nan  # a missing corner
    da = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": MODIS_BANDS}, name="toa",
                      attrs={"crs": "+proj=sinu +R=6371007.181 +units=m"})
    da.to_netcdf(path, encoding={"toa": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 150.0,
                                         "_FillValue": -32768}})
