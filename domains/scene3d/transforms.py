"""Point-cloud and radiance-grid preprocessing: unit-sphere normalisation, resampling to a fixed size,
augmentation, and density to opacity."""
from __future__ import annotations

import logging

import numpy as np
import torch

from scimae.core.errors import DataError

log = logging.getLogger(__name__)


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1: [N, 3] -> [N, 3]."""
    centred = points - points.mean(0)
    radius = float(np.sqrt((centred ** 2).sum(1)).max())
    return (centred / radius if radius > 0 else centred).astype(np.float32)


def check_count(n_found: int, n: int, floor: int, name="cloud") -> None:
    """Fewer than ``floor`` points is an error (too few to group); fewer than ``n`` is a warning (the
    cloud will be resampled with replacement)."""
    if n_found < floor:
        raise DataError(name, f"{n_found} points", f"at least {floor} points to sample {n} for grouping")
    if n_found < n:
        log.warning("%s: %d points, fewer than %d; resampled with replacement", name, n_found, n)


def resample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` points: a random subset, or drawn with replacement when there are fewer."""
    return points[rng.choice(len(points), n, replace=len(points) < n)]


def random_rotation(rng: np.random.Generator, axis: str = "z") -> np.ndarray:
    """A random rotation matrix [3, 3]: about the up axis ('z') or uniform over SO(3) ('so3')."""
    from scipy.spatial.transform import Rotation

    if axis == "so3":
        return Rotation.random(random_state=rng).as_matrix().astype(np.float32)
    if axis == "z":
        return Rotation.from_euler("z", rng.uniform(0, 2 * np.pi)).as_matrix().astype(np.float32)
    raise ValueError(f"rotation must be 'z' or 'so3', got {axis!r}")


def augment(points: np.ndarray, rng: np.random.Generator, rotation: str | None = "z") -> np.ndarray:
    """Training augmentation (Point-MAE): a random rotation, anisotropic scale in [2/3, 3/2], shift of 0.2."""
    if rotation:
        points = points @ random_rotation(rng, rotation).T
    return (points * rng.uniform(2 / 3, 3 / 2, 3) + rng.uniform(-0.2, 0.2, 3)).astype(np.float32)


def density_to_opacity(sigma: np.ndarray, rule: str = "alpha", delta: float = 1.0) -> np.ndarray:
    """Raw NeRF density to opacity in [0, 1]: 'alpha' = 1 - exp(-relu(sigma) * delta) (the opacity of one
    voxel step of length ``delta``, as in volume rendering), or 'clip' = sigma clipped to [0, 1]."""
    if rule == "alpha":
        return (1.0 - np.exp(-np.maximum(sigma, 0.0) * delta)).astype(np.float32)
    if rule == "clip":
        return np.clip(sigma, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"opacity rule must be 'alpha' or 'clip', got {rule!r}")


def fit_grid(a: np.ndarray, size: tuple[int, int, int], fill=0) -> np.ndarray:
    """Crop or pad the first three axes of ``a`` to ``size`` (padding at the far end with ``fill``)."""
    out = np.full((*size, *a.shape[3:]), fill, a.dtype)
    w, l, h = (min(s, t) for s, t in zip(a.shape[:3], size))
    out[:w, :l, :h] = a[:w, :l, :h]
    return out


def summary_statistics(points: torch.Tensor, pairs: int = 512) -> torch.Tensor:
    """The evaluation's ``simple`` baseline, unchanged by rotations and reflections: the covariance's
    eigenvalues, the extents along its axes (5-95th percentile), the 10/25/50/75/90th percentiles, mean
    and std of the distances to the centroid and between points (the D2 shape distribution, over the
    first ``pairs`` points), and the mean distance to the nearest neighbour. points [B, N, 3] -> [B, 23]."""
    x = points - points.mean(1, keepdim=True)  # [B, N, 3]
    eigval, eigvec = torch.linalg.eigh(x.transpose(1, 2) @ x / x.shape[1])  # [B, 3], [B, 3, 3]
    along = x @ eigvec  # [B, N, 3]
    levels = torch.tensor([0.05, 0.95], dtype=x.dtype)
    extent = torch.quantile(along, levels, dim=1).diff(dim=0)[0]  # [B, 3]
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=x.dtype)
    radial = x.norm(dim=-1)  # [B, N]
    d = torch.cdist(x[:, :pairs], x[:, :pairs])  # [B, P, P]
    i, j = torch.triu_indices(d.shape[1], d.shape[1], 1)
    upper = d[:, i, j]  # [B, P (P - 1) / 2]
    nearest = (d + torch.eye(d.shape[1]) * 1e9).min(-1).values.mean(-1)  # [B]
    parts = [eigval, extent, torch.quantile(radial, q, dim=1).T, radial.mean(1, keepdim=True), radial.std(1, keepdim=True),
             torch.quantile(upper, q, dim=1).T, upper.mean(1, keepdim=True), upper.std(1, keepdim=True), nearest[:, None]]
    return torch.cat(parts, 1)  # [B, 23]
