"""Synthetic 3D datasets in native formats: shape point clouds as PLY and PCD files in class folders
(open3d meshes sampled to points, with noise, partial views and random rotations), and rooms of a few
objects as NeRF-style ``rgbsigma`` grids (.npz) with a padding mask and per-voxel labels.

The shape classes are ``left`` and ``right``: each cloud is one of four chiral objects (a helix, a tripod
of three unequal arms, a chair with one armrest, a propeller with pitched blades) in random proportions,
or its mirror image. A mirror image has the same distances between all its points, so no rotation-invariant
statistic (extents, radial or pairwise-distance histograms) tells the classes apart: only how the parts
are arranged does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scimae.core.files import build_folder_once
from scimae.core.progress import progress
from scimae.domains.scene3d.io import write_cloud

VERSION = 3
FAMILIES = ["helix", "tripod", "armchair", "propeller"]
SHAPES = ["left", "right"]  # class folders: an object as built, or its mirror image
VOXEL_CLASSES = ["empty", "floor", "box", "ball", "pillar"]
_COLOURS = {"floor": (0.55, 0.45, 0.35), "box": (0.8, 0.2, 0.15), "ball": (0.15, 0.3, 0.85), "pillar": (0.2, 0.7, 0.3)}


def _box(o3d, size, at, rotation=None):
    m = o3d.geometry.TriangleMesh.create_box(*size)
    m = m.translate(-np.asarray(size, float) / 2)
    if rotation is not None:
        m = m.rotate(rotation, center=(0, 0, 0))
    return m.translate(np.asarray(at, float))


def _helix(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A right-handed helical tube: points on its surface and their outward normals, [n, 3] each."""
    radius, pitch, turns, tube = rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.6), rng.uniform(1.5, 3.0), rng.uniform(0.08, 0.14)
    t = rng.uniform(0, 2 * np.pi * turns, n)
    axis = np.stack([radius * np.cos(t), radius * np.sin(t), pitch * t / (2 * np.pi)], 1)  # the curve
    tangent = np.stack([-radius * np.sin(t), radius * np.cos(t), np.full(n, pitch / (2 * np.pi))], 1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    inward = np.stack([-np.cos(t), -np.sin(t), np.zeros(n)], 1)
    binormal = np.cross(tangent, inward)
    phi = rng.uniform(0, 2 * np.pi, n)[:, None]
    normals = np.cos(phi) * inward + np.sin(phi) * binormal
    return axis + tube * normals, normals


def shape_mesh(family: str, rng: np.random.Generator):
    """An open3d triangle mesh of a (right-handed) chiral object with random proportions."""
    import open3d as o3d
    from scipy.spatial.transform import Rotation

    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    if family == "tripod":  # arms along x, y, z, longest to shortest
        a, b, c, t = u(1.3, 1.6), u(0.8, 1.1), u(0.35, 0.6), u(0.1, 0.16)
        parts = [_box(o3d, (a, t, t), (a / 2, 0, 0)), _box(o3d, (t, b, t), (0, b / 2, 0)), _box(o3d, (t, t, c), (0, 0, c / 2))]
    elif family == "armchair":  # a seat on four legs, a back, and one armrest, on the right
        w, d, h, t, leg = u(0.8, 1.2), u(0.8, 1.2), u(0.7, 1.1), 0.08, u(0.06, 0.12)
        parts = [_box(o3d, (w, d, t), (0, 0, h))]
        parts += [_box(o3d, (leg, leg, h), (sx * (w - leg) / 2, sy * (d - leg) / 2, h / 2)) for sx in (-1, 1) for sy in (-1, 1)]
        parts.append(_box(o3d, (w, t, u(0.7, 1.0)), (0, (d - t) / 2, h + 0.45)))
        parts.append(_box(o3d, (t, d * 0.8, t), ((w - t) / 2, 0, h + u(0.25, 0.35))))
    elif family == "propeller":  # a hub and three blades, each turned the same way about its own axis
        length, width, pitch = u(0.8, 1.1), u(0.25, 0.4), u(25, 40)
        parts = [o3d.geometry.TriangleMesh.create_cylinder(0.15, 0.3, 20)]
        for k in range(3):
            turn = Rotation.from_euler("xz", [pitch, 120 * k], degrees=True).as_matrix()  # twist, then place
            at = Rotation.from_euler("z", 120 * k, degrees=True).as_matrix() @ np.array([length / 2 + 0.1, 0, 0])
            parts.append(_box(o3d, (length, width, 0.04), at, turn))
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    mesh = parts[0]
    for p in parts[1:]:
        mesh += p
    return mesh


def shape_cloud(family: str, hand: str, rng: np.random.Generator, n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Points and normals of an object (``hand`` right: as built, left: its mirror image), stretched,
    rotated at random (any orientation), noisy, and half of the time a partial view (the side away from a
    random viewpoint cut)."""
    import open3d as o3d
    from scipy.spatial.transform import Rotation

    if family == "helix":
        points, normals = _helix(rng, n)
    else:
        o3d.utility.random.seed(int(rng.integers(2 ** 31)))
        pc = shape_mesh(family, rng).sample_points_uniformly(n, use_triangle_normal=True)
        points, normals = np.asarray(pc.points), np.asarray(pc.normals)
    if hand == "left":
        points, normals = points * [-1, 1, 1], normals * [-1, 1, 1]
    stretch = rng.uniform(0.85, 1.18, 3)  # positive scales keep the handedness
    points, normals = (points - points.mean(0)) * stretch, normals / stretch  # normals: inverse transpose
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    rot = Rotation.random(random_state=rng).as_matrix()
    points, normals = points @ rot.T, normals @ rot.T
    points = points + rng.normal(0, 0.02, points.shape)
    if rng.random() < 0.5:
        view = rng.normal(size=3)
        keep = points @ (view / np.linalg.norm(view)) > -0.1 * np.abs(points).max()
        points, normals = points[keep], normals[keep]
    return points.astype(np.float32), normals.astype(np.float32)


def room_grid(rng: np.random.Generator, size: int = 32) -> dict[str, np.ndarray]:
    """A room: a floor and 2-4 objects (boxes, balls, pillars) voxelised into rgbsigma [S, S, S, 4]
    (RGB in [0, 1], raw density), with a padding mask (the room is smaller than the grid) and labels."""
    w, l = (int(rng.integers(size * 3 // 4, size + 1)) for _ in range(2))
    x, y, z = np.meshgrid(*[np.arange(size) + 0.5] * 3, indexing="ij")
    labels = np.zeros((size,) * 3, np.int64)
    labels[:, :, :2] = VOXEL_CLASSES.index("floor")
    for _ in range(int(rng.integers(2, 5))):
        kind = str(rng.choice(["box", "ball", "pillar"]))
        cx, cy = rng.uniform(5, w - 5), rng.uniform(5, l - 5)
        r = rng.uniform(2.5, 4.5)
        if kind == "box":
            inside = (abs(x - cx) < r) & (abs(y - cy) < rng.uniform(2.5, 4.5)) & (z >= 2) & (z < 2 + rng.uniform(4, 9))
        elif kind == "ball":
            inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - 2 - r) ** 2 < r ** 2
        else:
            inside = ((x - cx) ** 2 + (y - cy) ** 2 < (r / 2) ** 2) & (z >= 2) & (z < rng.uniform(12, size - 2))
        labels[inside] = VOXEL_CLASSES.index(kind)
    mask = (x < w) & (y < l)
    labels[~mask] = 0
    rgb = rng.uniform(0, 1, (*labels.shape, 3))  # empty space: arbitrary colour, as a NeRF leaves it
    sigma = rng.normal(-1.0, 1.0, labels.shape)  # raw density: about zero in free space
    for k, name in enumerate(VOXEL_CLASSES[1:], start=1):
        sel = labels == k
        rgb[sel] = np.clip(np.asarray(_COLOURS[name]) + rng.normal(0, 0.05, (sel.sum(), 3)), 0, 1)
        sigma[sel] = rng.uniform(15, 40) + rng.normal(0, 2, sel.sum())
    rgbsigma = np.concatenate([rgb, sigma[..., None]], -1).astype(np.float32)
    rgbsigma[~mask] = 0
    return {"rgbsigma": rgbsigma, "mask": mask, "labels": labels.astype(np.uint8)}


def write_dataset(root: str | Path | None = None, per_class: int = 30, rooms: int = 48, seed: int = 0) -> Path:
    """Write once and return the folder: shapes/<class>/<class>_NNN.{ply,pcd} and rooms/room_NNN.npz."""
    key = f"{per_class} shapes per class, {rooms} rooms, seed {seed}"
    return build_folder_once(root, key, lambda tmp: _write(tmp, per_class, rooms, seed), f"scene3d_synthetic_v{VERSION}")


def _write(tmp: Path, per_class: int, rooms: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for hand in progress(SHAPES, "writing synthetic point clouds (per class)"):
        (tmp / "shapes" / hand).mkdir(parents=True)
        for i in range(per_class):
            family = FAMILIES[i % len(FAMILIES)]
            points, normals = shape_cloud(family, hand, rng)
            suffix = ".ply" if i % 2 == 0 else ".pcd"  # both native formats, PCD binary_compressed
            write_cloud(tmp / "shapes" / hand / f"{family}_{i:03d}{suffix}", points, normals)
    (tmp / "rooms").mkdir()
    for i in progress(range(rooms), "writing synthetic NeRF grids"):
        np.savez_compressed(tmp / "rooms" / f"room_{i:03d}.npz", **room_grid(rng))
