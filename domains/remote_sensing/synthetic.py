"""A synthetic remote-sensing dataset whose scene classes differ in spatial layout, not in spectra.

Georeferenced 4-band GeoTIFF tiles (R, G, B, NIR, NAIP-like uint8) in the FireRisk folder layout
(tiles/<class>/*.tif), with label rasters of the land cover for segmentation, a nodata border on some tiles,
a small MODIS-like 14-band NetCDF, and small MODIS granules as HDF4-EOS files: four MOD09GA tiles
(mod09ga/*.hdf) and two MOD021KM L1B swaths (mod021km/*.hdf). Every tile holds the same land covers in the same shares (a quarter
water, a quarter crops, half forest): the covers are the quantiles of a random field whose shape is the
class (parallel field stripes, an orchard-like grid, rings around a pond, scattered blobs). So the per-band
statistics of a tile are the same for every class; only how the covers are arranged tells them apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scimae.core.files import build_folder_once
from scimae.core.progress import progress
from scimae.domains.remote_sensing.hdf4 import SATVISION_TOA_BANDS
from scimae.domains.remote_sensing.transforms import C1, C2, WAVENUMBERS

VERSION = 4
COVERS = ["water", "crops", "forest"]
SHARES = np.array([0.25, 0.25, 0.5])  # of every tile, in COVERS order
#                       R    G    B   NIR  (uint8 digital numbers)
SIGNATURES = np.array([[30, 45, 60, 15],     # water: dark, darkest in NIR
                       [90, 120, 70, 150],   # crops
                       [40, 80, 45, 190]], np.float32)  # forest: green, very bright NIR
CLASSES = ["stripes", "grid", "rings", "blobs"]  # the scene classes: layouts of the same covers
TILE = 32  # one model window: the shares hold exactly in what the model reads
MODIS_BANDS = SATVISION_TOA_BANDS  # the synthetic MODIS stack and L1B granules: SatVision-TOA's 14 bands


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
    """Write once (complete or not at all) and return the folder: tiles/<class>/*.tif, labels/*.tif, modis.nc,
    mod09ga/*.hdf, mod021km/*.hdf."""
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
    (tmp / "mod09ga").mkdir()
    for h, v in ((8, 5), (9, 5), (8, 6), (9, 6)):
        write_mod09ga(tmp / "mod09ga" / f"MOD09GA.A2008296.h{h:02d}v{v:02d}.061.2020001000000.hdf", rng, tile=(h, v))
    (tmp / "mod021km").mkdir()
    for t in ("0000", "0005"):
        write_mod021km(tmp / "mod021km" / f"MOD021KM.A2019001.{t}.061.2019001120000.hdf", rng, 64, 64)


def write_modis(path: Path, rng: np.random.Generator, size: int = 64) -> None:
    """A 14-band top-of-atmosphere stack: reflectance bands and brightness-temperature bands as scaled
    int16 with a fill value (decoded by xarray)."""
    import xarray as xr

    cover = land_cover(rng, size, "blobs")
    refl = SIGNATURES[cover].transpose(2, 0, 1) / 255.0  # [4, H, W]
    bands = []
    for b in MODIS_BANDS:
        if b[1:] not in WAVENUMBERS:  # reflectance-like: mixtures of the four signatures
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


MOD09GA_BANDS = [f"sur_refl_b{b:02d}" for b in range(1, 8)]
SINUSOIDAL_TILE_M = 1111950.5197665  # side of one MODIS sinusoidal tile (h, v)
MODIS_X0, MODIS_Y0 = -20015109.355798, 10007554.677899  # upper-left corner of tile h00v00


def write_mod09ga(path: Path, rng: np.random.Generator, size: int = 64, tile: tuple[int, int] = (8, 5)) -> Path:
    """A MOD09GA granule as the product lays it out, at ``size`` x ``size`` pixels instead of 2400 (the same tile
    corners, so coarser pixels): HDF4-EOS with ``StructMetadata.0``, grid ``MODIS_Grid_500m_2D`` holding
    ``sur_refl_b01_1`` ... ``sur_refl_b07_1`` (int16, scale_factor 0.0001, _FillValue -28672, valid_range
    -100..16000) and grid ``MODIS_Grid_1km_2D`` holding ``state_1km_1`` (uint16; bits 0-1 cloud state). A fill
    corner and a few out-of-range values, as real granules have."""
    from pyhdf.SD import SD, SDC

    h, v = tile
    ul = (MODIS_X0 + h * SINUSOIDAL_TILE_M, MODIS_Y0 - v * SINUSOIDAL_TILE_M)
    lr = (ul[0] + SINUSOIDAL_TILE_M, ul[1] - SINUSOIDAL_TILE_M)
    cover = land_cover(rng, size, "blobs")
    rgbn = SIGNATURES[cover].transpose(2, 0, 1) / 255.0 * 0.6  # [4, H, W] reflectance of R, G, B, NIR
    swir = np.stack([0.8 * rgbn[3], 0.5 * rgbn[3] + 0.3 * rgbn[0], 0.6 * rgbn[0]])  # bands 5-7
    refl = np.stack([rgbn[0], rgbn[3], rgbn[2], rgbn[1], *swir]) + rng.normal(0, 0.005, (7, size, size))
    raw = np.round(refl / 1e-4).astype(np.int16)  # [7, H, W] MODIS band order: red, NIR, blue, green, 1240, 1640, 2130 nm
    raw[:, : size // 8, : size // 8] = -28672  # fill: outside the swath
    raw[0, -1, -3:] = 16500  # out of valid_range
    cloud = (land_cover(rng, size // 2, "blobs") == 0).astype(np.uint16)  # bits 0-1: 01 = cloudy
    grids = {"MODIS_Grid_500m_2D": (size, [(f"{b}_1", raw[i], SDC.INT16) for i, b in enumerate(MOD09GA_BANDS)]),
             "MODIS_Grid_1km_2D": (size // 2, [("state_1km_1", cloud | 0b1000, SDC.UINT16)])}  # bit 3: land
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    for grid, (n, fields) in grids.items():
        for name, data, kind in fields:
            sds = sd.create(name, kind, (n, n))
            for axis, dim in enumerate(("YDim", "XDim")):
                sds.dim(axis).setname(f"{dim}:{grid}")
            if kind == SDC.INT16:
                sds.setfillvalue(-28672)
                sds.attr("valid_range").set(SDC.INT16, [-100, 16000])
                sds.attr("scale_factor").set(SDC.FLOAT64, 1e-4)
                sds.attr("add_offset").set(SDC.FLOAT64, 0.0)
                sds.attr("units").set(SDC.CHAR8, "reflectance")
            else:
                sds.setfillvalue(65535)
            sds[:] = data
            sds.endaccess()
    sd.attr("StructMetadata.0").set(SDC.CHAR8, struct_metadata({g: (n, [f[0] for f in fs]) for g, (n, fs) in grids.items()},
                                                               ul, lr))
    sd.end()
    return path


def struct_metadata(grids: dict[str, tuple[int, list[str]]], ul: tuple[float, float], lr: tuple[float, float]) -> str:
    """HDF-EOS's ODL grid description for square sinusoidal grids: {grid name: (pixels per side, SDS names)}."""
    lines = ["GROUP=SwathStructure", "END_GROUP=SwathStructure", "GROUP=GridStructure"]
    for k, (name, (n, fields)) in enumerate(grids.items(), 1):
        lines += [f"\tGROUP=GRID_{k}", f'\t\tGridName="{name}"', f"\t\tXDim={n}", f"\t\tYDim={n}",
                  f"\t\tUpperLeftPointMtrs=({ul[0]:.6f},{ul[1]:.6f})", f"\t\tLowerRightMtrs=({lr[0]:.6f},{lr[1]:.6f})",
                  "\t\tProjection=GCTP_SNSOID", "\t\tProjParams=(6371007.181000,0,0,0,0,0,0,0,0,0,0,0,0)",
                  "\t\tSphereCode=-1", "\t\tGridOrigin=HDFE_GD_UL", "\t\tGROUP=DataField"]
        for j, field in enumerate(fields, 1):
            lines += [f"\t\t\tOBJECT=DataField_{j}", f'\t\t\t\tDataFieldName="{field}"', '\t\t\t\tDimList=("YDim","XDim")',
                      f"\t\t\tEND_OBJECT=DataField_{j}"]
        lines += ["\t\tEND_GROUP=DataField", f"\tEND_GROUP=GRID_{k}"]
    return "\n".join(lines + ["END_GROUP=GridStructure", "GROUP=PointStructure", "END_GROUP=PointStructure", "END", ""])


MOD021KM_BANDS = {"EV_250_Aggr1km_RefSB": "1,2", "EV_500_Aggr1km_RefSB": "3,4,5,6,7",
                  "EV_1KM_RefSB": "8,9,10,11,12,13lo,13hi,14lo,14hi,15,16,17,18,19,26",
                  "EV_1KM_Emissive": "20,21,22,23,24,25,27,28,29,30,31,32,33,34,35,36"}


def write_mod021km(path: Path, rng: np.random.Generator, rows: int = 40, cols: int = 30) -> dict[str, np.ndarray]:
    """A MOD021KM (L1B 1 km) granule as the product lays it out, at rows x cols pixels instead of 2030 x 1354: the
    four earth-view SDS (uint16 scaled integers with band_names and per-band scales and offsets; values above 32767
    flag bad data), 5 km Latitude/Longitude and a swath StructMetadata.0. Returns the true values it encoded:
    {"b01": TOA reflectance [rows, cols], ..., "b31": brightness temperature in K, ...}."""
    from pyhdf.SD import SD, SDC

    warm = land_cover(rng, max(rows, cols), "blobs")[:rows, :cols] != 0  # [rows, cols]
    truth, sd = {}, SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    for field, names in MOD021KM_BANDS.items():
        names = names.split(",")
        shape = (len(names), rows, cols)
        if field == "EV_1KM_Emissive":
            true = 250 + 40 * warm + rng.normal(0, 1, shape)  # brightness temperature, K
            um = 1e4 / np.array([WAVENUMBERS[n] for n in names])[:, None, None]
            value, prefix = C1 / (um ** 5 * np.expm1(C2 / (um * true))), "radiance"  # W m^-2 sr^-1 um^-1
        else:
            true = value = 0.08 + 0.3 * warm * rng.uniform(0.5, 1.0, (len(names), 1, 1)) + rng.normal(0, 0.01, shape)
            prefix = "reflectance"
        scales, offsets = (value.max((1, 2)) / 30000).astype(np.float32), rng.uniform(0, 300, len(names)).astype(np.float32)
        raw = np.round(value / scales[:, None, None] + offsets[:, None, None]).astype(np.uint16)
        raw[:, -1, -2:] = 65533  # flagged: saturated
        sds = sd.create(field, SDC.UINT16, shape)
        sds.setfillvalue(65535)
        sds.attr("band_names").set(SDC.CHAR8, ",".join(names))
        sds.attr("valid_range").set(SDC.UINT16, [0, 32767])
        sds.attr(f"{prefix}_scales").set(SDC.FLOAT32, scales.tolist())
        sds.attr(f"{prefix}_offsets").set(SDC.FLOAT32, offsets.tolist())
        sds[:] = raw
        sds.endaccess()
        truth.update({f"b{n.zfill(2)}": true[i] for i, n in enumerate(names)})
    for name, values in (("Latitude", np.linspace(40, 38, rows // 5)[:, None] + np.zeros(cols // 5)),
                         ("Longitude", np.linspace(-100, -97, cols // 5)[None] + np.zeros((rows // 5, 1)))):
        sds = sd.create(name, SDC.FLOAT32, values.shape)
        sds[:] = values.astype(np.float32)
        sds.endaccess()
    sd.attr("StructMetadata.0").set(SDC.CHAR8, "\n".join([
        "GROUP=SwathStructure", "\tGROUP=SWATH_1", '\t\tSwathName="MODIS_SWATH_Type_L1B"', "\tEND_GROUP=SWATH_1",
        "END_GROUP=SwathStructure", "GROUP=GridStructure", "END_GROUP=GridStructure", "END", ""]))
    sd.end()
    return truth
