"""Remote-sensing preprocessing of a window (standardised bands, patch validity, georeference) and the
features of a sample that need no model."""
from __future__ import annotations

import numpy as np
import torch


def window_transform(scene, row: int, col: int) -> torch.Tensor:
    """The georeference (a, b, c, d, e, f) of the scene's window whose top-left pixel is (row, col), as a tensor
    [6]; zeros for a scene without an affine (rasterio's ``Affine``)."""
    from affine import Affine

    t = getattr(scene, "transform", None)
    if not isinstance(t, Affine):
        return torch.zeros(6, dtype=torch.float64)
    a, b, c, d, e, f = tuple(t)[:6]
    return torch.tensor((a, b, c + a * col + b * row, d, e, f + d * col + e * row), dtype=torch.float64)


# MODIS emissive bands: the published effective central wavenumbers (cm^-1; Terra, band-averaged spectral
# responses) at which Planck's law turns L1B radiance into brightness temperature.
WAVENUMBERS = {"20": 2641.775, "21": 2505.277, "22": 2518.028, "23": 2465.428, "24": 2235.815, "25": 2200.346,
               "27": 1477.967, "28": 1362.737, "29": 1173.190, "30": 1027.715, "31": 908.0884, "32": 831.5399,
               "33": 748.3394, "34": 730.8963, "35": 718.8681, "36": 704.5367}
C1, C2 = 1.191042e8, 1.4387752e4  # 2hc^2 in W um^4 m^-2 sr^-1, hc/k in um K


def brightness_temperature(radiance: np.ndarray, band: str) -> np.ndarray:
    """Planck's law inverted at the band's effective central wavelength: radiance in W m^-2 sr^-1 um^-1 -> K."""
    um = 1e4 / WAVENUMBERS[band]
    with np.errstate(divide="ignore", invalid="ignore"):
        return C2 / (um * np.log1p(C1 / (um ** 5 * radiance)))


GEO_OFFSET, GEO_STEP = 2, 5  # MODIS L1B 5 km geolocation: sample k lies on 1 km pixel 2 + 5k (rows and columns)


def sample_pixels(n: int) -> np.ndarray:
    """The 1 km pixel [n] on which each of ``n`` 5 km geolocation samples lies (along rows or columns)."""
    return GEO_OFFSET + GEO_STEP * np.arange(n)


def swath_geolocation(lat: np.ndarray, lon: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Latitude and longitude [len(rows), len(cols)] of 1 km swath pixels from the 5 km grids ``lat``, ``lon``
    [R, C]: bilinear between samples, linear past the outer ones, across the antimeridian without a jump."""
    from scipy.interpolate import RegularGridInterpolator

    grid = tuple(sample_pixels(n).astype(np.float64) for n in lat.shape)
    lon = np.unwrap(np.unwrap(lon, period=360, axis=1), period=360, axis=0)
    points = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1)  # [h, w, 2]
    lat_i, lon_i = (RegularGridInterpolator(grid, v, bounds_error=False, fill_value=None)(points) for v in (lat, lon))
    return np.clip(lat_i, -90, 90), (lon_i + 180) % 360 - 180


def swath_samples(lat: np.ndarray, lon: np.ndarray, row: int, col: int, size: int) -> dict[str, np.ndarray]:
    """The 5 km samples inside the size x size window at (row, col): their pixel rows [r] and columns [c] in the
    window, and their latitude and longitude [r, c]."""
    (i, rows), (j, cols) = ((np.flatnonzero((p >= lo) & (p < lo + size)), p - lo)
                            for p, lo in ((sample_pixels(lat.shape[0]), row), (sample_pixels(lat.shape[1]), col)))
    return {"rows": rows[i], "cols": cols[j], "lat": lat[np.ix_(i, j)], "lon": lon[np.ix_(i, j)]}


def swath_gcps(lat: np.ndarray, lon: np.ndarray, every: int = 1) -> list:
    """rasterio ground control points (x = longitude, y = latitude, EPSG:4326) at the pixel centres of the 5 km
    samples, every ``every``-th sample per axis."""
    from rasterio.control import GroundControlPoint

    rows, cols = sample_pixels(lat.shape[0]) + 0.5, sample_pixels(lat.shape[1]) + 0.5
    return [GroundControlPoint(row=float(rows[i]), col=float(cols[j]), x=float(lon[i, j]), y=float(lat[i, j]))
            for i in range(0, lat.shape[0], every) for j in range(0, lat.shape[1], every)]


def window_bounds(row: int, col: int, size: int, height: int, width: int, cols: int | None = None
                  ) -> tuple[int, int, int, int]:
    """The part (r0, c0, r1, c1) of the window of ``size`` rows and ``cols`` columns (default ``size``) at (row, col)
    inside a height x width scene; empty (r1 <= r0 or c1 <= c0) when the window lies outside it."""
    return max(row, 0), max(col, 0), min(row + size, height), min(col + (cols or size), width)


def to_sample(x: np.ndarray, valid: np.ndarray, mean, std, patch: int, min_valid: float) -> dict[str, torch.Tensor]:
    """Bands [..., Nb, h, w] and validity -> per-band image [..., Nb, 1, h, w] and patch_valid [..., Nb, h/p, w/p]."""
    *lead, nb, h, w = x.shape
    image = np.where(valid, (x - mean) / std, 0.0).astype(np.float32)
    patch_valid = valid.reshape(*lead, nb, h // patch, patch, w // patch, patch).mean((-3, -1)) >= min_valid
    return {"image": torch.from_numpy(image).unsqueeze(-3), "patch_valid": torch.from_numpy(patch_valid)}


def summary_statistics(image: torch.Tensor, patch_valid: torch.Tensor) -> torch.Tensor:
    """The evaluation's ``simple`` baseline: per band slot, the mean, std and 10/50/90th percentiles of the
    valid pixels (the spectra a per-pixel or band-mean classifier sees). image [B, G, C, h, w] (normalised),
    patch_valid [B, G, h/p, w/p] -> [B, G * C * 5]."""
    B, G, C, h, w = image.shape
    p = h // patch_valid.shape[-2]
    valid = patch_valid.repeat_interleave(p, -2).repeat_interleave(p, -1)[:, :, None]  # [B, G, 1, h, w]
    x = image.masked_fill(~valid, float("nan")).flatten(3)  # [B, G, C, h * w]
    q = torch.nanquantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=x.dtype), dim=-1)  # [3, B, G, C]
    mean = torch.nanmean(x, -1)
    std = torch.nanmean((x - mean[..., None]) ** 2, -1).sqrt()
    return torch.nan_to_num(torch.stack([mean, std, *q], -1)).flatten(1)  # [B, G * C * 5]
