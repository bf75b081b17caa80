"""Point-cloud and radiance-grid preprocessing: unit-sphere normalisation, resampling to a fixed size,
augmentation, grouping (farthest point sampling, per cloud with open3d in the data workers or per batch in torch or
pytorch3d, and k nearest neighbours), and density to opacity."""
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


def has_pytorch3d() -> bool:
    try:
        import pytorch3d.ops  # noqa: F401
    except ImportError:
        return False
    return True


def has_open3d() -> bool:
    try:
        import open3d  # noqa: F401
    except ImportError:
        return False
    return True


def cloud_centres(points: np.ndarray, k: int) -> np.ndarray:
    """Indices [k] of ``k`` farthest points of one cloud [N, 3], starting from point 0, in index order: open3d's
    ``farthest_point_down_sample``, which returns the chosen points (distinct, so each maps back to one index)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    chosen = np.asarray(cloud.farthest_point_down_sample(k).points, dtype=points.dtype)  # [k, 3]
    return ((chosen[:, None] - points[None]) ** 2).sum(-1).argmin(1)  # [k]


def farthest_point_sample(points: torch.Tensor, k: int, use_pytorch3d: bool | None = None) -> torch.Tensor:
    """Indices [B, k] of ``k`` farthest points of points [B, N, 3], starting from point 0 (pytorch3d's
    ``sample_farthest_points`` where installed; the same rule in torch otherwise)."""
    if use_pytorch3d if use_pytorch3d is not None else has_pytorch3d():
        from pytorch3d.ops import sample_farthest_points

        return sample_farthest_points(points, K=k)[1]
    B, N, _ = points.shape
    idx = points.new_zeros((B, k), dtype=torch.long)
    nearest = points.new_full((B, N), float("inf"))  # squared distance to the chosen set
    last = idx[:, 0]
    rows = torch.arange(B, device=points.device)
    for i in range(1, k):  # a loop over the k centres, vectorised over the batch and the points
        nearest = torch.minimum(nearest, (points - points[rows, last][:, None]).pow(2).sum(-1))
        last = nearest.argmax(1)
        idx[:, i] = last
    return idx


def knn(query: torch.Tensor, points: torch.Tensor, k: int, use_pytorch3d: bool | None = None) -> torch.Tensor:
    """Indices [B, M, k] of the ``k`` nearest points [B, N, 3] of each query [B, M, 3], nearest first
    (pytorch3d's ``knn_points`` where installed; cdist + topk otherwise)."""
    if use_pytorch3d if use_pytorch3d is not None else has_pytorch3d():
        from pytorch3d.ops import knn_points

        return knn_points(query, points, K=k, return_sorted=True).idx
    return torch.cdist(query, points).topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(points: torch.Tensor, n_groups: int, group_size: int,
                 centre_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """points [B, N, 3] -> centres [B, G, 3] (FPS, unless ``centre_idx`` [B, G] gives them) and neighbourhoods
    [B, G, k, 3] relative to their centre."""
    with torch.no_grad():
        if centre_idx is None:
            centre_idx = farthest_point_sample(points, n_groups)  # [B, G]
        centres = points.gather(1, centre_idx[..., None].expand(-1, -1, 3))
        nn_idx = knn(centres, points, group_size)  # [B, G, k]
    B, G, k = nn_idx.shape
    neigh = points.gather(1, nn_idx.reshape(B, G * k, 1).expand(-1, -1, 3)).reshape(B, G, k, 3)
    return centres, neigh - centres[:, :, None]


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
