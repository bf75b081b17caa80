"""Synthetic NTU RGB+D ``.skeleton`` files whose actions differ in structure, not in statistics.

Every performance swings both arms with the same amplitude and rate and crouches once; the 8 actions are
the phase of the left arm relative to the right (in phase, leading by a quarter cycle, in anti-phase,
lagging by a quarter cycle) crossed with the tempo of a squat (dropping quickly and rising slowly, or the same
movement reversed in time: lowering slowly and springing up). Every sequence starts and ends standing, and
each joint's distribution of positions and speeds over a sequence is the same for every action, so per-joint summary statistics cannot tell the actions apart: only how joints move
relative to each other and in which order does. Bone lengths, rate, start phase, timing, camera rotation
and noise vary; some samples have two people, some frames no body, some a misdetected "body" (a wide,
static object) for the cleaning to remove."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scimae.core.files import build_folder_once
from scimae.core.progress import progress
from scimae.domains.skeleton.io import Sequence, write_skeleton
from scimae.domains.skeleton.transforms import JOINTS

VERSION = 3
PHASES = {"in_phase": 0.0, "left_leads": 0.5 * np.pi, "anti_phase": np.pi, "left_lags": 1.5 * np.pi}
ACTIONS = [f"{squat}_{phase}" for squat in ("drop", "spring") for phase in PHASES]  # A001..A008
J = {n: i for i, n in enumerate(JOINTS)}
_REST = {"spine_base": (0, 0, 0), "spine_mid": (0, 0.25, 0), "spine_shoulder": (0, 0.5, 0), "neck": (0, 0.58, 0),
         "head": (0, 0.72, 0), "hip_l": (-0.09, -0.02, 0), "knee_l": (-0.1, -0.42, 0), "ankle_l": (-0.1, -0.82, 0),
         "foot_l": (-0.1, -0.86, 0.1), "shoulder_l": (-0.18, 0.48, 0), "elbow_l": (-0.22, 0.22, 0),
         "wrist_l": (-0.24, 0.0, 0), "hand_l": (-0.25, -0.07, 0), "handtip_l": (-0.25, -0.14, 0),
         "thumb_l": (-0.22, -0.08, 0.03)}
_REST.update({k[:-1] + "r": (-x, y, z) for k, (x, y, z) in list(_REST.items()) if k.endswith("_l")})
REST = np.array([_REST[n] for n in JOINTS], np.float64)  # [V, 3], metres, y up


def _chain(side: str, limb: str) -> tuple[int, list[int], int, list[int]]:
    """(root, joints below the root, middle joint, joints below the middle) of an arm or leg."""
    if limb == "arm":
        names = ["elbow", "wrist", "hand", "handtip", "thumb"]
        return J[f"shoulder_{side}"], [J[f"{n}_{side}"] for n in names], J[f"elbow_{side}"], [J[f"{n}_{side}"] for n in names[1:]]
    names = ["knee", "ankle", "foot"]
    return J[f"hip_{side}"], [J[f"{n}_{side}"] for n in names], J[f"knee_{side}"], [J[f"{n}_{side}"] for n in names[1:]]


def _rotate(pose: np.ndarray, pivot: int, joints: list[int], axis: str, angle: np.ndarray) -> None:
    """Rotate ``joints`` of pose [T, V, 3] about joint ``pivot`` by ``angle`` [T] (radians), in place."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec(np.outer(angle, np.eye(3)["xyz".index(axis)])).as_matrix()  # [T, 3, 3]
    centre = pose[:, pivot:pivot + 1]  # [T, 1, 3]
    pose[:, joints] = np.einsum("tij,tvj->tvi", r, pose[:, joints] - centre) + centre


def _limb(pose, side, limb, axis, upper, lower=None):
    root, below, middle, end = _chain(side, limb)
    if lower is not None:
        _rotate(pose, middle, end, axis, lower)
    _rotate(pose, root, below, axis, upper)


def perform(action: str, T: int, rng: np.random.Generator) -> np.ndarray:
    """Joint positions [T, V, 3] of one performance, in the body's own frame."""
    squat, _, phase = action.partition("_")
    if squat not in ("drop", "spring") or phase not in PHASES:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    p = np.linspace(0, 1, T)
    start = rng.uniform(0, 2 * np.pi)
    cycles = rng.uniform(2, 3.5)
    right = np.sin(2 * np.pi * cycles * p + start)
    left = np.sin(2 * np.pi * cycles * p + start + PHASES[phase])
    onset = rng.uniform(0.05, 0.2)  # down in 0.15 of the sequence, hold 0.2, up in 0.4, standing again
    ease = lambda u: np.clip(u, 0, 1) ** 2 * (3 - 2 * np.clip(u, 0, 1))  # noqa: E731
    down = ease((p - onset) / 0.15) - ease((p - onset - 0.35) / 0.4)  # 0 standing, 1 squatting
    if squat == "spring":
        down = down[::-1]  # the same movement backwards in time: same positions, same speeds
    rest = REST * rng.uniform(0.85, 1.15)  # body size, then each limb's own length
    for side in "lr":
        for limb in ("arm", "leg"):
            root, below, _, _ = _chain(side, limb)
            rest[below] = rest[root] + (rest[below] - rest[root]) * rng.uniform(0.9, 1.1)
    pose = np.repeat(rest[None], T, axis=0)
    _limb(pose, "r", "arm", "x", 0.7 * right, -0.4 * (1 + right) / 2)
    _limb(pose, "l", "arm", "x", 0.7 * left, -0.4 * (1 + left) / 2)
    for side in "lr":
        _limb(pose, side, "leg", "x", -1.4 * down, 1.4 * down)
    pose[..., 1] -= 0.42 * down[:, None]
    return pose


def to_camera(pose: np.ndarray, rng: np.random.Generator, yaw: float, offset: np.ndarray) -> np.ndarray:
    """Body frame -> Kinect camera space (metres; z away from the camera), rotated about the vertical."""
    c, s = np.cos(yaw), np.sin(yaw)
    r = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return pose @ r.T + offset + rng.normal(0, 0.005, pose.shape)


def body_columns(xyz: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The 12 joint values and 9 body values NTU files carry, for camera-space joints [T, V, 3]."""
    T, V, _ = xyz.shape
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    q = np.concatenate([np.ones((T, V, 1)), rng.normal(0, 0.05, (T, V, 3))], -1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    joints = np.concatenate([xyz, np.stack([256 + 365 * x / z, 212 - 365 * y / z, 960 + 1050 * x / z,
                                            540 - 1050 * y / z], -1), q, np.full((T, V, 1), 2.0)], -1)
    body = np.tile([0, 1, 1, 1, 1, 0, 0, 0, 2], (T, 1)).astype(np.float64)
    body[:, 6:8] = rng.normal(0, 0.05, (T, 2))  # lean
    return np.round(joints, 6), np.round(body, 6)


def make_sequence(action: int, rng: np.random.Generator, two_people: bool, empty_frames: int,
                  misdetection: bool) -> Sequence:
    """A sequence of ACTIONS[action] with its bodies as NTU would record them."""
    T = int(rng.integers(40, 90))
    yaw = rng.uniform(-np.pi / 4, np.pi / 4)
    base = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.2), rng.uniform(2.5, 4.0)])
    people = [to_camera(perform(ACTIONS[action], T, rng), rng, yaw, base)]
    if two_people:
        people.append(to_camera(perform(ACTIONS[action], T, rng), rng, yaw, base + [0.9, 0, 0.3]))
    total = T + empty_frames
    M = len(people) + misdetection
    joints = np.full((M, total, len(JOINTS), 12), np.nan)
    body = np.full((M, total, 9), np.nan)
    for m, xyz in enumerate(people):
        joints[m, empty_frames:], body[m, empty_frames:] = body_columns(xyz, rng)
    if misdetection:  # a wide, flat, static object seen for a few frames
        t0 = empty_frames + int(rng.integers(0, T - 8))
        flat = np.stack([np.linspace(-0.8, 0.8, len(JOINTS)), rng.normal(0, 0.02, len(JOINTS)), np.full(len(JOINTS), 3.5)], -1)
        joints[-1, t0:t0 + 8], body[-1, t0:t0 + 8] = body_columns(np.repeat(flat[None], 8, 0) + [0, -0.5, 0], rng)
    ids = [str(int(rng.integers(10 ** 16, 10 ** 17))) for _ in range(M)]
    return Sequence(ids, joints, body)


def write_dataset(root: str | Path | None = None, per_action: int = 30, seed: int = 0) -> Path:
    """Write once and return the folder of SsssCcccPpppRrrrAaaa.skeleton files."""
    key = f"{per_action} sequences per action, seed {seed}"
    return build_folder_once(root, key, lambda tmp: _write(tmp, per_action, seed), f"skeleton_synthetic_v{VERSION}")


def _write(tmp: Path, per_action: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for a in progress(range(len(ACTIONS)), "writing synthetic .skeleton files (per action)"):
        for i in range(per_action):
            setup, camera, performer = i // 24 + 1, i % 3 + 1, i % 8 + 1  # unique names: lcm(3, 8) = 24
            seq = make_sequence(a, rng, two_people=i % 6 == 5, empty_frames=int(rng.integers(1, 4)) if i % 5 == 4 else 0,
                                misdetection=i % 10 == 7)
            name = f"S{setup:03d}C{camera:03d}P{performer:03d}R001A{a + 1:03d}"
            write_skeleton(tmp / f"{name}.skeleton", seq)
