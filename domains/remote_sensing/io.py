"""Scenes from GeoTIFFs (one multi-band file, or one file per band), xarray stacks (NetCDF, zarr) and MODIS
HDF4-EOS granules (:mod:`~scimae.domains.remote_sensing.hdf4`).

A scene answers ``read(window)`` with the bands of a pixel window as float32 [C, h, w] and a validity
mask, reading only that window; a window past the scene's edge comes back padded and invalid.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scimae.core.errors import DataError, require
from scimae.domains.remote_sensing.hdf4 import open_granule
from scimae.domains.remote_sensing.transforms import window_bounds

log = logging.getLogger(__name__)


@dataclass
class Band:
    """One row of the band table: name, kind and normalisation ((value - mean) / std)."""

    name: str
    kind: str = "reflectance"  # reflectance or brightness_temperature
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if self.kind not in ("reflectance", "brightness_temperature"):
            raise ValueError(f"band {self.name}: kind must be reflectance or brightness_temperature, got {self.kind!r}")
        if self.std <= 0:
            raise ValueError(f"band {self.name}: std must be > 0, got {self.std}")


class RasterScene:
    """Bands from GeoTIFFs via rasterio: ``sources`` maps band name -> (file, 1-based band index).

    Files on another grid than the first are warped onto it (WarpedVRT) with a warning.
    """

    def __init__(self, sources: dict[str, tuple[str, int]], bands: list[Band], crs=None):
        import rasterio
        from rasterio.enums import MaskFlags

        self.bands, self.name = bands, str(next(iter(sources.values()))[0])
        self._open: dict[str, object] = {}
        ref = None
        for band in bands:
            path, _ = sources[band.name]
            if path in self._open:
                continue
            try:
                src = rasterio.open(path)
            except rasterio.errors.RasterioIOError as e:
                raise DataError(path, f"a file rasterio cannot open as a raster ({e})", "a GeoTIFF") from None
            if ref is None:
                if src.crs is None:
                    log.warning("%s has no CRS; treated as pixel space", path)
                elif crs is not None and src.crs != crs:
                    own, src = src.crs, _warped(src, path, crs=crs)
                    log.warning("%s is in %s, not the dataset's %s; reprojected", path, crs_name(own), crs_name(crs))
                ref = src
            elif (src.crs, src.transform, src.shape) != (ref.crs, ref.transform, ref.shape):
                log.warning("%s is on another grid (%s) than %s (%s); warped onto it", path, src.crs, ref.name, ref.crs)
                src = _warped(src, path, crs=ref.crs, transform=ref.transform, width=ref.width, height=ref.height)
            self._open[path] = src
        self.sources = sources
        self._by_file: dict[str, tuple[list[int], list[int]]] = {}
        for i, band in enumerate(bands):
            path, index = sources[band.name]
            slots, indexes = self._by_file.setdefault(path, ([], []))
            slots.append(i)
            indexes.append(index)
        # files whose validity is their nodata value alone (no alpha band or internal mask) are read raw and
        # compared with it: the same validity as a masked read without building the mask array
        self._nodata_only = {path: all(set(self._open[path].mask_flag_enums[k - 1]) <= {MaskFlags.all_valid, MaskFlags.nodata}
                                       for k in indexes) for path, (_, indexes) in self._by_file.items()}
        self.crs, self.transform, self.height, self.width = ref.crs, ref.transform, ref.height, ref.width

    def read(self, row: int, col: int, size: int, cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Window at (row, col) of ``size`` rows and ``cols`` columns (default ``size``) -> (values [C, size, cols]
        float32, valid [C, size, cols]).

        Only the part inside the scene is read; the rest is padding, invalid, as are nodata and non-finite pixels."""
        from rasterio.errors import NodataShadowWarning, RasterioError
        from rasterio.windows import Window

        out = np.zeros((len(self.bands), size, cols or size), np.float32)
        valid = np.zeros(out.shape, bool)
        r0, c0, r1, c1 = window_bounds(row, col, size, self.height, self.width, cols)
        if r1 <= r0 or c1 <= c0:
            return out, valid
        inside = Window(c0, r0, c1 - c0, r1 - r0)
        rows, cols = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
        for path, (slots, indexes) in self._by_file.items():  # one read per file, all its bands at once
            src = self._open[path]
            try:
                if self._nodata_only[path]:
                    raw = src.read(indexes, window=inside)
                    ok = np.ones(raw.shape, bool) if src.nodata is None else raw != src.nodata
                else:
                    with warnings.catch_warnings():  # nodata, not an alpha band, decides validity: as intended
                        warnings.simplefilter("ignore", NodataShadowWarning)
                        masked = src.read(indexes, window=inside, masked=True)
                    raw, ok = masked.data, ~np.ma.getmaskarray(masked)
            except RasterioError as e:
                raise DataError(path, f"a window rasterio cannot read ({e})", "a complete GeoTIFF") from None
            with np.errstate(over="ignore", invalid="ignore"):
                values = raw.astype(np.float32)
            ok &= np.isfinite(values)  # nodata, NaN and inf are invalid
            out[slots, rows, cols] = np.where(ok, values, 0.0)
            valid[slots, rows, cols] = ok
        return out, valid


class StackScene:
    """Bands from an xarray stack (NetCDF or zarr) with a band dimension; scale factors and fill values
    are applied by xarray's CF decoding, so fills become invalid."""

    def __init__(self, path: str | Path, bands: list[Band], variable: str | None = None, band_dim: str = "band"):
        import xarray as xr

        path = Path(path)
        if path.suffix == ".zarr":
            require("reading a zarr stack", "geo", "zarr")
        try:
            ds = xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path, mask_and_scale=True)
        except (OSError, ValueError) as e:
            raise DataError(path, f"a file xarray cannot open ({e})", "a NetCDF or zarr stack") from None
        names = [str(v) for v in ds.data_vars]
        if not names or (variable is not None and variable not in names):
            wanted = f"a data variable named {variable!r}" if variable else "a data variable"
            raise DataError(path, f"data variables {names}", wanted)
        da = ds[variable or names[0]]
        if band_dim not in da.dims:
            da = da.expand_dims(band_dim)
        if da.ndim != 3:
            raise DataError(path, f"variable {da.name!r} with dimensions {tuple(map(str, da.dims))}",
                            f"({band_dim}, y, x) or (y, x)")
        names = [str(b) for b in da[band_dim].values] if band_dim in da.coords else None
        if names:
            missing = [b.name for b in bands if b.name not in names]
            if missing:
                raise DataError(path, f"bands {names}", f"bands named {[b.name for b in bands]} (missing {missing})")
            da = da.sel({band_dim: [b.name for b in bands]})
        elif da.sizes[band_dim] != len(bands):
            raise DataError(path, f"{da.sizes[band_dim]} bands", f"{len(bands)} bands for {[b.name for b in bands]}")
        self.da = da.transpose(band_dim, ...)
        self.bands, self.name = bands, str(path)
        self.height, self.width = self.da.shape[-2:]
        self.crs = self.da.attrs.get("crs")
        self.transform = self.da.attrs.get("transform")

    def read(self, row: int, col: int, size: int, cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(self.bands), size, cols or size), np.nan, np.float32)
        r0, c0, r1, c1 = window_bounds(row, col, size, self.height, self.width, cols)
        if r1 > r0 and c1 > c0:
            block = self.da[:, r0:r1, c0:c1].values.astype(np.float32)  # only the window is read
            out[:, r0 - row:r1 - row, c0 - col:c1 - col] = block
        valid = np.isfinite(out)
        return np.where(valid, out, 0.0), valid


def labelled_tiles(root: Path) -> tuple[list[Path], list[str]]:
    """A folder of class subfolders of GeoTIFF tiles (the FireRisk layout) -> (tiles, class names)."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    tiles = [(p, c) for c in classes for p in sorted((root / c).glob("*.tif"))]
    if not tiles:
        raise DataError(root, "no class subfolders with .tif tiles", "<root>/<class>/<tile>.tif")
    return [p for p, _ in tiles], [c for _, c in tiles]


def _match_band_file(folder: Path, band: str) -> Path | None:
    for path in sorted(folder.glob("*.tif*")):
        stem = path.name.split(".")[0]
        if stem.lower() == band.lower() or stem.lower().endswith(f"_{band.lower()}"):
            return path
    return None


def crs_name(crs) -> str:
    """``EPSG:32614``, or the name a WKT definition gives (``LOCAL_CS["Site grid", ...`` -> ``Site grid``)."""
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    named = re.match(r'\s*\w+\["([^"]*)"', crs.to_wkt())
    return named.group(1) if named else crs.to_string()


def _warped(src, path: str, **grid):
    """``src`` seen through a WarpedVRT on another grid (``crs``, optionally ``transform``, ``width``,
    ``height``); a DataError naming the file where PROJ knows no way from its CRS to that one (e.g. a local
    engineering CRS)."""
    import rasterio
    from rasterio._err import CPLE_BaseError  # GDAL's errors, which rasterio raises as they are
    from rasterio.errors import RasterioError
    from rasterio.vrt import WarpedVRT

    try:
        with rasterio.Env():  # GDAL's messages go to logging, not straight to stderr
            return WarpedVRT(src, **grid)
    except (CPLE_BaseError, RasterioError):
        raise DataError(path, f"a scene in {crs_name(src.crs)}, which PROJ cannot transform to {crs_name(grid['crs'])}",
                        "scenes in one CRS, or in CRSs with a known transformation between them") from None


def check_scene(path: Path, bands: list[Band], cloud_mask: bool = False) -> None:
    """Open a scene and read a window at its centre (the dataset preflight): a DataError if either fails."""
    scene = open_scene(path, bands, cloud_mask=cloud_mask)
    scene.read(max(0, scene.height // 2 - 16), max(0, scene.width // 2 - 16), 32)


def open_scene(path: str | Path, bands: list[Band], crs=None, cloud_mask: bool = False):
    """A multi-band GeoTIFF (bands by description if it has them, every band of the table among them; else by
    position), a folder with one GeoTIFF per band (matched by name), a NetCDF/zarr stack, or a MODIS HDF4-EOS
    granule (:mod:`~scimae.domains.remote_sensing.hdf4`; ``cloud_mask``: its QC flags). GeoTIFFs in another
    CRS than ``crs`` (a dataset's first scene's) are reprojected onto it with a warning."""
    import rasterio

    path = Path(path)
    if path.suffix.lower() in (".nc", ".zarr"):
        return StackScene(path, bands)
    if path.suffix.lower() == ".hdf":
        return open_granule(path, bands, cloud_mask)
    if path.is_dir():
        sources = {}
        for band in bands:
            file = _match_band_file(path, band.name)
            if file is None:
                raise DataError(path, f"no file for band {band.name}", f"a GeoTIFF named {band.name}.tif or *_{band.name}.tif")
            sources[band.name] = (str(file), 1)
        return RasterScene(sources, bands, crs)
    if not path.is_file():
        raise DataError(path, "no such file", "a GeoTIFF, a folder of per-band GeoTIFFs, or a NetCDF/zarr stack")
    try:
        with rasterio.open(path) as src:
            count, descriptions = src.count, [d for d in src.descriptions]
    except rasterio.errors.RasterioIOError as e:
        raise DataError(path, f"a file rasterio cannot open as a raster ({e})", "a GeoTIFF") from None
    names = [b.name for b in bands]
    if all(descriptions):  # named bands are matched by name, never by position
        if not set(names) <= set(descriptions):
            raise DataError(path, f"bands named {descriptions}", f"the bands {names} (missing "
                                  f"{[n for n in names if n not in descriptions]}), as the band table or the export says")
        return RasterScene({b.name: (str(path), descriptions.index(b.name) + 1) for b in bands}, bands, crs)
    if count != len(bands):
        raise DataError(path, f"{count} bands" + (f" named {descriptions}" if all(descriptions) else ""),
                        f"{len(bands)} bands ({names}), as the band table says")
    return RasterScene({b.name: (str(path), i + 1) for i, b in enumerate(bands)}, bands, crs)
