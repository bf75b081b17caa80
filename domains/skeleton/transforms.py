"""The NTU 25-joint body graph, and cleaning and normalisation of skeleton sequences."""
from __future__ import annotations

import numpy as np
import torch

from scimae.core.errors import DataError
from scimae.domains.skeleton.io import Sequence

JOINTS = ["spine_base", "spine_mid", "neck", "head", "shoulder_l", "elbow_l", "wrist_l", "hand_l", "shoulder_r",
          "elbow_r", "wrist_r", "hand_r", "hip_l", "knee_l", "ankle_l", "foot_l", "hip_r", "knee_r", "ankle_r",
          "foot_r", "spine_shoulder", "handtip_l", "thumb_l", "handtip_r", "thumb_r"]
# bones of the NTU RGB+D skeleton, 1-based as published
_BONES_1 = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
            (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 8), (23, 8),
            (24, 12), (25, 12)]
BONES = [(a - 1, b - 1) for a, b in _BONES_1]
PARTS = {"head": [2, 3], "torso": [0, 1, 20], "arm_l": [4, 5, 6, 7, 21, 22], "arm_r": [8, 9, 10, 11, 23, 24],
         "leg_l": [12, 13, 14, 15], "leg_r": [16, 17, 18, 19]}
CENTRE = JOINTS.index("spine_mid")


def part_of_joint() -> np.ndarray:
    """[V] index of each joint's body part (in PARTS order)."""
    out = np.empty(len(JOINTS), np.int64)
    for i, joints in enumerate(PARTS.values()):
        out[joints] = i
    return out


def adjacency(normalised: bool = True) -> np.ndarray:
    """[V, V] bone adjacency with self-loops; ``normalised``: D^-1/2 (A + I) D^-1/2 (as in GCNs)."""
    a = np.eye(len(JOINTS))
    for i, j in BONES:
        a[i, j] = a[j, i] = 1
    if not normalised:
        return a
    d = 1 / np.sqrt(a.sum(1))
    return a * d[:, None] * d[None]


def hop_distance() -> np.ndarray:
    """[V, V] number of bones between joints (scipy's shortest paths on the bone graph)."""
    from scipy.sparse.csgraph import shortest_path

    return shortest_path(adjacency(False) - np.eye(len(JOINTS)), unweighted=True).astype(np.int64)


def noisy_spread(xyz: np.ndarray, present: np.ndarray, ratio: float = 0.8, frames: float = 0.69) -> bool:
    """True when a body is implausibly wide (x spread > ``ratio`` x y spread) in more than ``frames`` of its
    frames: the denoising rule used for NTU RGB+D (objects misdetected as bodies)."""
    x, y = xyz[present, :, 0], xyz[present, :, 1]  # [t, V]
    wide = (x.max(1) - x.min(1)) > ratio * (y.max(1) - y.min(1))
    return bool(wide.mean() > frames)


def clean(seq: Sequence, max_bodies: int = 2, min_frames: int = 5, name="sequence") -> tuple[np.ndarray, np.ndarray]:
    """Drop empty frames, keep up to ``max_bodies`` bodies chosen by motion (bodies seen in fewer than
    ``min_frames`` frames or implausibly wide are dropped first, unless nothing else is left), centre on the
    first frame's spine-middle joint -> (xyz [max_bodies, T', V, 3] zero where absent, present [max_bodies])."""
    seen = seq.present()  # [M, T]
    frames = seen.any(0)
    if not frames.any():
        raise DataError(name, "no body in any frame", "at least one frame with a body")
    xyz, seen = seq.joints[:, frames, :, :3], seen[:, frames]  # [M, T', V, 3], [M, T']
    good = [m for m in range(len(xyz)) if seen[m].sum() >= min_frames and not noisy_spread(xyz[m], seen[m])]
    candidates = good or list(range(len(xyz)))
    motion = [np.nanvar(np.where(seen[m][:, None, None], xyz[m], np.nan), axis=0).sum() for m in candidates]
    chosen = [candidates[i] for i in np.argsort(motion)[::-1][:max_bodies]]
    chosen.sort(key=lambda m: np.argmax(seen[m]))  # the first to appear first
    out = np.zeros((max_bodies, xyz.shape[1], xyz.shape[2], 3), np.float32)
    here = np.zeros((max_bodies, xyz.shape[1]), bool)  # [max_bodies, T']
    for k, m in enumerate(chosen):
        out[k], here[k] = np.where(seen[m][:, None, None], xyz[m], 0.0), seen[m]
    first = out[0, np.argmax(here[0]), CENTRE].copy()
    out = np.where(here[:, :, None, None], out - first, 0.0)
    return out.astype(np.float32), here.any(1)


def resample_frames(x: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation along axis 1 (time) of [M, T, ...] to ``length`` frames."""
    T = x.shape[1]
    pos = np.linspace(0, T - 1, length)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, T - 1)
    w = (pos - lo).reshape(1, -1, *([1] * (x.ndim - 2)))
    return (x[:, lo] * (1 - w) + x[:, hi] * w).astype(np.float32)


def random_rotation(x: np.ndarray, rng: np.random.Generator, max_angle: float = 0.3) -> np.ndarray:
    """Rotate [..., 3] coordinates by random angles in [-max_angle, max_angle] rad about each axis."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_euler("xyz", rng.uniform(-max_angle, max_angle, 3)).as_matrix().astype(np.float32)
    return x @ r.T


def summary_statistics(joints: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The evaluation's ``simple`` baseline features, per sequence: for every joint and axis of the present
    bodies, the mean, std and 10/50/90th percentiles over time, and each joint's mean and std speed.
    joints [B, M, T, V, 3], present [B, M] -> [B, V * 17]."""
    w = present[:, :, None, None, None].to(joints.dtype)  # [B, M, 1, 1, 1]
    xyz = (joints * w).sum(1) / w.sum(1).clamp_min(1)  # [B, T, V, 3]: the mean of the present bodies
    q = torch.quantile(xyz, torch.tensor([0.1, 0.5, 0.9], dtype=xyz.dtype), dim=1)  # [3, B, V, 3]
    speed = (xyz[:, 1:] - xyz[:, :-1]).norm(dim=-1)  # [B, T - 1, V]
    parts = [xyz.mean(1), xyz.std(1), *q, speed.mean(1)[..., None], speed.std(1)[..., None]]  # each [B, V, *]
    return torch.cat([p.flatten(1) for p in parts], 1)  # [B, V * 17]
