"""MODIS gridded granules (MOD09GA, MOD09A1, MCD43A4 ...) as NASA distributes them: HDF4-EOS files read with pyhdf.

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
from scimae.domains.remote_sensing.transforms import window_bounds

if TYPE_CHECKING:
    from scimae.domains.remote_sensing.io import Band

MODIS_SPHERE_M = 6371007.181  # radius of the sphere of the MODIS sinusoidal grid
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
EXPECTED = "an HDF4-EOS granule (.hdf) with a StructMetadata.0 grid description, as LAADS or LP DAAC distribute it"


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


class HdfScene:
    """The bands of one grid of an HDF4-EOS granule (``grid``; default: the first grid holding every band), with the
    grid's sinusoidal CRS and affine. The same ``read`` contract as :class:`~scimae.domains.remote_sensing.io.RasterScene`."""

    def __init__(self, path: str | Path, bands: list[Band], grid: str | None = None, cloud_mask: bool = False):
        require("reading HDF4-EOS granules", "geo", "pyhdf")
        from pyhdf.error import HDF4Error
        from pyhdf.SD import SD, SDC
        from rasterio.crs import CRS

        path = Path(path)
        self.bands, self.name = bands, str(path)
        if not path.is_file():
            raise DataError(path, "no such file", EXPECTED)
        with open(path, "rb") as f:
            if f.read(8) == HDF5_SIGNATURE:
                raise DataError(path, "an HDF5 file (HDF-EOS5 or NetCDF-4), not HDF4", EXPECTED)
        try:
            self._sd = SD(str(path), SDC.READ)
            meta = self._sd.attributes().get("StructMetadata.0")
        except HDF4Error as e:
            raise DataError(path, f"a file the HDF4 library cannot read ({e})", EXPECTED) from None
        if not meta:
            raise DataError(path, "an HDF4 file without StructMetadata.0 (not HDF-EOS)", EXPECTED)
        grids = {name: g for name, g in parse_grids(meta).items() if g.fields}
        if not grids:
            raise DataError(path, "no grids in StructMetadata.0 (a swath granule?)", "a gridded MODIS product "
                            "(MOD09GA, MOD09A1, MCD43A4, ...)")
        fields = {g.name: {**{_band_name(f): f for f in g.fields}, **{f: f for f in g.fields}} for g in grids.values()}
        names = [b.name for b in bands]
        if grid is None:
            grid = next((g for g in grids if set(names) <= set(fields[g])), None)
            if grid is None:
                raise DataError(path, "grids " + "; ".join(f"{g.name}: {g.fields}" for g in grids.values()),
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
        self.grid = grid
        self.crs = CRS.from_proj4(f"+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R={g.radius} +units=m +no_defs")
        self.transform, self.height, self.width = g.affine(), g.height, g.width

    def read(self, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Window at (row, col) of size x size -> (values [C, size, size] float32, valid [C, size, size]); only the
        part inside the grid is read, the rest is padding, invalid, as are fill, out-of-range and (with
        ``cloud_mask``) cloudy values."""
        from pyhdf.error import HDF4Error

        out = np.zeros((len(self.bands), size, size), np.float32)
        valid = np.zeros(out.shape, bool)
        r0, c0, r1, c1 = window_bounds(row, col, size, self.height, self.width)
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
