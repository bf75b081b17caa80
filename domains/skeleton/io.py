"""NTU RGB+D ``.skeleton`` files (read and written exactly), their file-name metadata and splits, and
skeleton arrays (N, C, T, V, M) from .npy / .npz."""
from __future__ import annotations

import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scimae.core.errors import DataError

log = logging.getLogger(__name__)

N_JOINTS = 25
BODY_FIELDS = ["clipped_edges", "hand_left_confidence", "hand_left_state", "hand_right_confidence",
               "hand_right_state", "restricted", "lean_x", "lean_y", "tracking_state"]  # after the body id
JOINT_FIELDS = ["x", "y", "z", "depth_x", "depth_y", "color_x", "color_y", "orientation_w", "orientation_x",
                "orientation_y", "orientation_z", "tracking_state"]
_INT_BODY = {0, 1, 2, 3, 4, 5, 8}  # integer columns of BODY_FIELDS
NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
# the published evaluation protocols (Shahroudy et al. 2016)
TRAIN_SUBJECTS = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
TRAIN_CAMERAS = {2, 3}


@dataclass
class Sequence:
    """One ``.skeleton`` file. Bodies are kept by id in order of first appearance:
    joints [M, T, V, 12] and body [M, T, 9] (NaN in frames where that body is absent)."""

    body_ids: list[str]
    joints: np.ndarray
    body: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.joints.shape[1]

    def present(self) -> np.ndarray:
        """[M, T] bool: body m is in frame t."""
        return ~np.isnan(self.joints[..., 0, 0])


def parse_name(path: str | Path) -> dict:
    """``S001C002P003R002A013`` -> setup, camera, performer, replication, action (1-based, as in the name)."""
    m = NAME.search(Path(path).name)
    if not m:
        return {}
    return dict(zip(("setup", "camera", "performer", "replication", "action"), map(int, m.groups())))


def in_split(meta: dict, split: str, train: bool) -> bool:
    """Membership in the cross-subject ('xsub') or cross-view ('xview') training or test set."""
    if split == "xsub":
        return (meta["performer"] in TRAIN_SUBJECTS) == train
    if split == "xview":
        return (meta["camera"] in TRAIN_CAMERAS) == train
    raise ValueError(f"split must be 'xsub' or 'xview', got {split!r}")


def read_skeleton(path: str | Path, n_joints: int = N_JOINTS) -> Sequence:
    """Parse an NTU RGB+D ``.skeleton`` file exactly; every malformation is a DataError with its line."""
    path = Path(path)
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"an unreadable file ({e})", "an NTU RGB+D .skeleton text file") from None
    lines = [ln.strip() for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(path, "an empty file", "a frame count on line 1")
    pos = 0

    def take(n_values: int, what: str) -> list[str]:
        nonlocal pos
        if pos >= len(lines):
            raise DataError(path, f"the file ending at line {pos} (a truncated frame)", what)
        parts = lines[pos].split()
        if len(parts) != n_values:
            raise DataError(path, f"line {pos + 1} with {len(parts)} values", f"{what} ({n_values} values)")
        pos += 1
        return parts

    def number(text: str, line: int, kind=float):
        try:
            return kind(text)
        except ValueError:
            raise DataError(path, f"{text!r} on line {line}", "a number") from None

    n_frames = number(take(1, "the frame count")[0], 1, int)
    if n_frames < 0:
        raise DataError(path, f"a frame count of {n_frames} on line 1", "a frame count >= 0")
    ids: list[str] = []
    frames: list[list[tuple[str, list[str], np.ndarray]]] = []
    for t in range(n_frames):
        n_bodies = number(take(1, f"the body count of frame {t + 1}")[0], pos, int)
        bodies = []
        for _ in range(n_bodies):
            info = take(10, f"a body line in frame {t + 1}")
            line = pos
            count = number(take(1, f"the joint count in frame {t + 1}")[0], pos, int)
            if count != n_joints:
                raise DataError(path, f"{count} joints on line {line + 1}", f"{n_joints} joints per body")
            if pos + n_joints > len(lines):
                raise DataError(path, f"the file ending at line {len(lines)} inside frame {t + 1} (a truncated frame)",
                                f"{n_joints} joint lines")
            block = [lines[pos + j].split() for j in range(n_joints)]
            bad = next((j for j, b in enumerate(block) if len(b) != 12), None)
            if bad is not None:
                raise DataError(path, f"line {pos + bad + 1} with {len(block[bad])} values", "a joint line of 12 values")
            try:
                joints = np.array(block, dtype=np.float64)
            except ValueError:
                j, text = next((j, v) for j, b in enumerate(block) for v in b if not _is_number(v))
                raise DataError(path, f"{text!r} on line {pos + j + 1}", "a number") from None
            number(info[0], line, int)  # the body id: a (large) integer, kept as text
            for v in info[1:]:
                number(v, line, float)
            pos += n_joints
            bodies.append((info[0], info[1:], joints))
            if info[0] not in ids:
                ids.append(info[0])
        frames.append(bodies)
    if pos != len(lines):
        raise DataError(path, f"{len(lines) - pos} lines after frame {n_frames}",
                        f"exactly the {n_frames} frames its first line announces")
    M = len(ids)
    joints = np.full((M, n_frames, n_joints, 12), np.nan)
    body = np.full((M, n_frames, 9), np.nan)
    for t, bodies in enumerate(frames):
        for bid, info, j in bodies:
            m = ids.index(bid)
            joints[m, t], body[m, t] = j, np.array(info, dtype=np.float64)
    with np.errstate(over="ignore"):
        usable = np.isfinite(joints[..., :3].astype(np.float32)).all((2, 3))  # [M, T]: x, y, z finite in float32
    bad = ~np.isnan(joints[..., 0, 0]) & ~usable
    if bad.any():
        log.warning("%s: %d bodies in frames with non-finite or out-of-range joints (NaN, inf, beyond float32); "
                    "left out of those frames", path, int(bad.sum()))
        joints[bad], body[bad] = np.nan, np.nan
    return Sequence(ids, joints, body, parse_name(path))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fmt(v: float, integer: bool) -> str:
    return str(int(v)) if integer else repr(float(v))


def write_skeleton(path: str | Path, seq: Sequence) -> None:
    """Write ``seq`` in the ``.skeleton`` format (values written so they read back exactly)."""
    out = [str(seq.n_frames)]
    present = seq.present()
    for t in range(seq.n_frames):
        here = [m for m in range(len(seq.body_ids)) if present[m, t]]
        out.append(str(len(here)))
        for m in here:
            info = [_fmt(v, i in _INT_BODY) for i, v in enumerate(seq.body[m, t])]
            out.append(" ".join([seq.body_ids[m], *info]))
            out.append(str(seq.joints.shape[2]))
            out += [" ".join(_fmt(v, i == 11) for i, v in enumerate(row)) for row in seq.joints[m, t]]
    Path(path).write_text("\n".join(out) + "\n")


def read_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Skeleton arrays (N, C, T, V, M) from .npy, or .npz with 'x' or 'data' (and 'y' or 'label')."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as npz:
                key = next((k for k in ("x", "data") if k in npz.files), None)
                if key is None:
                    raise DataError(path, f"arrays {npz.files}", "an 'x' or 'data' array (N, C, T, V, M)")
                x = npz[key]
                lab = next((k for k in ("y", "label") if k in npz.files), None)
                y = np.asarray(npz[lab]).reshape(-1) if lab else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(path, f"a file NumPy cannot read ({type(e).__name__}: {e})", "a .npy or .npz array file") from None
    if not np.issubdtype(x.dtype, np.number) or (y is not None and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(path, f"arrays of {x.dtype}" + (f" and labels of {y.dtype}" if y is not None else ""),
                        "numeric joint coordinates and integer labels")
    if x.ndim != 5 or x.shape[1] < 3:
        raise DataError(path, f"an array of shape {x.shape}", "(N, C >= 3, T, V, M)")
    if y is not None and len(y) != len(x):
        raise DataError(path, f"{len(y)} labels for {len(x)} sequences", "one label per sequence")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        log.warning("%s: %d non-finite or out-of-range values (NaN, inf, beyond float32) set to 0 (absent)",
                    path, int(bad.sum()))
        x[bad] = 0.0
    return x, (y.astype(np.int64) if y is not None else None)
