"""MODIS granules as NASA distributes them, HDF4-EOS files read with pyhdf: gridded tiles (MOD09GA, MOD09A1,
MCD43A4 ...) and L1B swaths (MOD021KM, :class:`SwathScene`).

An HDF4-EOS file holds scientific datasets (SDS) and a text attribute ``StructMetadata.0`` (ODL) describing its
grids: name, size (``XDim``, ``YDim``), corners in metres (``UpperLeftPointMtrs``, ``LowerRightMtrs``), projection
and the SDS (``DataFieldName``) on each. The MODIS land grids are sinusoidal on a sphere of 6371007.181 m. A band
is an SDS of one grid, named as in the file (``sur_refl_b01_1``) or without its ``_1`` suffix (``sur_refl_b01``);
its values are ``scale_factor x (raw - add_offset)`` (the HDF4 convention the MODIS products follow), and raw
values equal to ``_FillValue`` or outside ``valid_range`` are invalid. Only the requested window is read. With
``cloud_mask``, pixels that the granule's ``state_1km`` flags cloudy, mixed or cloud shadow (MOD09 bits 0-1 = 01 or
10, bit 2 set) are invalid too; the 1 km flags cover the finer grids' pixels they contain.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scimae.core.errors import DataError, require
from scimae.domains.remote_sensing.transforms import (brightness_temperature, swath_geolocation, swath_samples,
                                                      window_bounds)

if TYPE_CHECKING:
    from scimae.domains.remote_sensing.io import Band

MODIS_SPHERE_M = 6371007.181  # radius of the sphere of the MODIS sinusoidal grid
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
EXPECTED = "an HDF4-EOS granule (.hdf) with its StructMetadata.0, as LAADS or LP DAAC distribute it"


@dataclass
class Grid:
    """One grid of StructMetadata.0."""

    name: str
    width: int  # XDim
    height: int  # YDim
    upper_left: tuple[float, float]  # (x, y) in metres
    lower_right: tuple[float, float]
    projection: str  # GCTP name, e.g. GCTP_SNSOID
    radius: float  # sphere radius in metres (ProjParams[0], the MODIS sphere when 0)
    fields: list[str]  # the SDS on this grid

    def affine(self):
        """Pixel edges from the corners: rasterio's ``Affine``."""
        from affine import Affine

        (x0, y0), (x1, y1) = self.upper_left, self.lower_right
        return Affine((x1 - x0) / self.width, 0.0, x0, 0.0, (y1 - y0) / self.height, y0)


def parse_grids(text: str) -> dict[str, Grid]:
    """StructMetadata.0 (ODL text) -> its grids by name."""
    grids = {}
    for _, body in re.findall(r"GROUP=(GRID_\d+)(.*?)END_GROUP=\1\b", text, re.S):
        def value(key: str) -> str:
            found = re.search(rf"^\s*{key}=(.*?)\s*$", body, re.M)
            return found.group(1).strip('"') if found else ""

        def numbers(key: str) -> list[float]:
            return [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", value(key))]

        corners = numbers("UpperLeftPointMtrs"), numbers("LowerRightMtrs")
        params = numbers("ProjParams")
        grid = Grid(value("GridName"), int(value("XDim") or 0), int(value("YDim") or 0), tuple(corners[0][:2]),
                    tuple(corners[1][:2]), value("Projection"), params[0] if params and params[0] else MODIS_SPHERE_M,
                    re.findall(r'DataFieldName="([^"]+)"', body))
        grids[grid.name] = grid
    return grids


def _open(path: Path):
    """(pyhdf SD, StructMetadata.0 text) of an HDF4-EOS file; a DataError for anything else."""
    require("reading HDF4-EOS granules", "geo", "pyhdf")
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC

    if not path.is_file():
        raise DataError(path, "no such file", EXPECTED)
    with open(path, "rb") as f:
        if f.read(8) == HDF5_SIGNATURE:
            raise DataError(path, "an HDF5 file (HDF-EOS5 or NetCDF-4), not HDF4", EXPECTED)
    try:
        sd = SD(str(path), SDC.READ)
        meta = sd.attributes().get("StructMetadata.0")
    except HDF4Error as e:
        raise DataError(path, f"a file the HDF4 library cannot read ({e})", EXPECTED) from None
    if not meta:
        raise DataError(path, "an HDF4 file without StructMetadata.0 (not HDF-EOS)", EXPECTED)
    return sd, meta


def open_granule(path: str | Path, bands: list[Band], cloud_mask: bool = False):
    """A gridded granule (:class:`HdfScene`) or an L1B swath (:class:`SwathScene`), as its StructMetadata.0 says."""
    path = Path(path)
    opened = _open(path)  # read once, handed to the scene
    if re.search(r"GROUP=SWATH_\d+", opened[1]) and not any(g.fields for g in parse_grids(opened[1]).values()):
        if cloud_mask:
            raise DataError(path, "an L1B swath", "a gridded granule with state_1km QC flags for data.cloud_mask")
        return SwathScene(path, bands, opened)
    return HdfScene(path, bands, cloud_mask=cloud_mask, opened=opened)


class HdfScene:
    """The bands of one grid of an HDF4-EOS granule (``grid``; default: the first grid holding every band), with the
    grid's sinusoidal CRS and affine. The same ``read`` contract as :class:`~scimae.domains.remote_sensing.io.RasterScene`."""

    def __init__(self, path: str | Path, bands: list[Band], grid: str | None = None, cloud_mask: bool = False,
                 opened: tuple | None = None):
        from pyhdf.error import HDF4Error
        from rasterio.crs import CRS

        path = Path(path)
        self.bands, self.name = bands, str(path)
        self._sd, meta = opened or _open(path)  # opened: what _open returned for this path
        grids = {name: g for name, g in parse_grids(meta).items() if g.fields}
        if not grids:
            raise DataError(path, "no grids in StructMetadata.0 (a swath granule?)", "a gridded MODIS product "
                            "(MOD09GA, MOD09A1, MCD43A4, ...)")
        fields = {g.name: {**{_band_name(f): f for f in g.fields}, **{f: f for f in g.fields}} for g in grids.values()}
        names = [b.name for b in bands]
        if grid is None:
            grid = next((g for g in grids if set(names) <= set(fields[g])), None)
            if grid is None:
                raise DataError(path, "grids " + "; ".join(f"{g}: {q.fields}" for g, q in grids.items()),
                                f"one grid holding the bands {names}")
        elif grid not in grids:
            raise DataError(path, f"grids {sorted(grids)}", f"a grid named {grid!r}")
        missing = [n for n in names if n not in fields[grid]]
        if missing:
            raise DataError(path, f"grid {grid} with the bands {grids[grid].fields}", f"the bands {names} (missing {missing})")
        g = grids[grid]
        if g.projection != "GCTP_SNSOID":
            raise DataError(path, f"grid {grid} in projection {g.projection}", "a sinusoidal grid (GCTP_SNSOID)")
        state = next((q for q in grids.values() if "state_1km_1" in q.fields), None)
        if cloud_mask and state is None:
            raise DataError(path, f"grids {sorted(grids)} without state_1km", "a MOD09 granule with its state_1km QC "
                            "flags for data.cloud_mask")
        try:
            self._sds = [self._sd.select(fields[grid][n]) for n in names]
            self._state = (self._sd.select("state_1km_1"), g.width // state.width) if cloud_mask else None
            self._scaling = [_scaling(s.attributes()) for s in self._sds]
        except HDF4Error as e:
            raise DataError(path, f"a scientific dataset the HDF4 library cannot read ({e})", EXPECTED) from None
        self.grid, self.crs = grid, CRS.from_proj4(f"+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R={g.radius} +units=m +no_defs")
        self.transform, self.height, self.width = g.affine(), g.height, g.width

    def read(self, row: int, col: int, size: int, cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Window at (row, col) of size x size -> (values [C, size, size] float32, valid [C, size, size]); only the
        part inside the grid is read, the rest is padding, invalid, as are fill, out-of-range and (with
        ``cloud_mask``) cloudy values."""
        from pyhdf.error import HDF4Error

        out = np.zeros((len(self.bands), size, cols or size), np.float32)
        valid = np.zeros(out.shape, bool)
        r0, c0, r1, c1 = window_bounds(row, col, size, self.height, self.width, cols)
        if r1 <= r0 or c1 <= c0:
            return out, valid
        clear = True
        try:
            if self._state is not None:
                sds, k = self._state  # k finer pixels per 1 km pixel and side
                flags = np.asarray(sds[r0 // k:(r1 - 1) // k + 1, c0 // k:(c1 - 1) // k + 1])  # [h / k, w / k]
                flags = flags.repeat(k, 0).repeat(k, 1)[r0 % k:r0 % k + r1 - r0, c0 % k:c0 % k + c1 - c0]  # [h, w]
                clear = ~np.isin(flags & 0b11, (0b01, 0b10)) & (flags & 0b100 == 0)
            raws = [np.asarray(sds[r0:r1, c0:c1]) for sds in self._sds]  # [h, w] each: the window's slab only
        except HDF4Error as e:
            raise DataError(self.name, f"a window the HDF4 library cannot read ({e})", "a complete granule") from None
        for i, (raw, (scale, offset, fill, low, high)) in enumerate(zip(raws, self._scaling)):
            ok = (raw >= low) & (raw <= high) & ((raw != fill) if fill is not None else True) & clear
            out[i, r0 - row:r1 - row, c0 - col:c1 - col] = np.where(ok, scale * (raw - offset), 0.0)
            valid[i, r0 - row:r1 - row, c0 - col:c1 - col] = ok
        return out, valid


def _band_name(field: str) -> str:
    """``sur_refl_b01_1`` -> ``sur_refl_b01`` (MOD09GA's first-observation suffix); other names as they are."""
    return field[:-2] if field.endswith("_1") else field


def _scaling(attrs: dict) -> tuple[float, float, float | None, float, float]:
    """(scale_factor, add_offset, _FillValue, valid minimum, valid maximum) of an SDS's attributes."""
    low, high = attrs.get("valid_range", (-np.inf, np.inf))
    return float(attrs.get("scale_factor", 1.0)), float(attrs.get("add_offset", 0.0)), attrs.get("_FillValue"), low, high


L1B_FIELDS = ("EV_250_Aggr1km_RefSB", "EV_500_Aggr1km_RefSB", "EV_1KM_RefSB", "EV_1KM_Emissive")  # MOD021KM's earth view
SATVISION_TOA_BANDS = ["b01", "b02", "b03", "b26", "b06", "b20", "b07", "b27", "b28", "b29", "b31", "b32", "b33", "b34"]


class SwathScene:
    """MODIS L1B 1 km swath bands in sensor geometry (no CRS): ``b01`` ... ``b36`` (``b13lo``, ``b14hi`` ...) as the
    SDS ``band_names`` attributes list them. Reflective bands are TOA reflectance, reflectance_scales x (raw -
    reflectance_offsets); emissive bands brightness temperature from radiance_scales x (raw - radiance_offsets);
    raw values above 32767 (MODIS's flags for saturated, dead or missing data) are invalid."""

    def __init__(self, path: str | Path, bands: list[Band], opened: tuple | None = None):
        from pyhdf.error import HDF4Error

        path = Path(path)
        self.bands, self.name, self.crs, self.transform = bands, str(path), None, None
        self._sd, _ = opened or _open(path)
        where = {}
        try:
            for field in set(L1B_FIELDS) & set(self._sd.datasets()):
                sds = self._sd.select(field)
                attrs = sds.attributes()
                kind, prefix = (("brightness_temperature", "radiance") if field == "EV_1KM_Emissive"
                                else ("reflectance", "reflectance"))
                for k, number in enumerate(attrs["band_names"].split(",")):
                    where[f"b{number.zfill(2)}"] = (sds, k, kind, attrs[f"{prefix}_scales"][k],
                                                    attrs[f"{prefix}_offsets"][k], number)
            geo = [np.asarray(self._sd.select(n)[:], np.float64) for n in ("Latitude", "Longitude")]  # [R, C] 5 km
        except (HDF4Error, KeyError) as e:
            raise DataError(path, f"L1B datasets without their band_names and scales, or no 5 km Latitude/Longitude "
                            f"({e})", "a MOD021KM granule") from None
        self.latitude, self.longitude = geo
        missing = [b.name for b in bands if b.name not in where]
        if missing:
            raise DataError(path, f"L1B bands {sorted(where)}", f"the bands {[b.name for b in bands]} (missing {missing})")
        wrong = [f"{b.name} is {where[b.name][2]}" for b in bands if b.kind != where[b.name][2]]
        if wrong:
            raise DataError(path, "; ".join(wrong), "the band table's kinds to match the granule's")
        self._bands = [where[b.name] for b in bands]
        _, self.height, self.width = self._bands[0][0].info()[2]

    def geolocation(self, row: int, col: int, size: int, per_pixel: bool = False) -> dict[str, np.ndarray]:
        """The window's 5 km samples (:func:`swath_samples`), or with ``per_pixel`` its pixels' ``lat``, ``lon``
        [size, size] interpolated from them (:func:`swath_geolocation`)."""
        if not per_pixel:
            return swath_samples(self.latitude, self.longitude, row, col, size)
        lat, lon = swath_geolocation(self.latitude, self.longitude, np.arange(row, row + size), np.arange(col, col + size))
        return {"lat": lat, "lon": lon}

    def read(self, row: int, col: int, size: int, cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The same contract as :meth:`HdfScene.read`: TOA reflectance or brightness temperature, invalid where
        the raw value is a flag, the radiance is not positive, or the window leaves the swath."""
        from pyhdf.error import HDF4Error

        out = np.zeros((len(self.bands), size, cols or size), np.float32)
        valid = np.zeros(out.shape, bool)
        r0, c0, r1, c1 = window_bounds(row, col, size, self.height, self.width, cols)
        if r1 <= r0 or c1 <= c0:
            return out, valid
        for i, (sds, k, kind, scale, offset, number) in enumerate(self._bands):
            try:
                raw = np.asarray(sds[k, r0:r1, c0:c1]).astype(np.float64)  # [h, w]: one band's window only
            except HDF4Error as e:
                raise DataError(self.name, f"a window the HDF4 library cannot read ({e})", "a complete granule") from None
            value = scale * (raw - offset)
            ok = raw <= 32767
            if kind == "brightness_temperature":
                ok &= value > 0
                value = brightness_temperature(np.where(ok, value, 1.0), number)
            out[i, r0 - row:r1 - row, c0 - col:c1 - col] = np.where(ok, value, 0.0)
            valid[i, r0 - row:r1 - row, c0 - col:c1 - col] = ok
        return out, valid
