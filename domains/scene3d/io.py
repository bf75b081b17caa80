"""Readers for point clouds (open3d: PLY, PCD, XYZ, PTS; meshes sampled to points; .npy; HDF5 in the
ModelNet40 / ScanObjectNN layout) and NeRF radiance grids (the NeRF-RPN / NeRF-MAE ``.npz`` layout)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scimae.core.errors import DataError, require

CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts")
MESH_SUFFIXES = (".off", ".obj")
SUFFIXES = CLOUD_SUFFIXES + MESH_SUFFIXES + (".npy", ".h5", ".hdf5")


@dataclass
class Cloud:
    """One point cloud: points [N, 3] float32, colours and normals [N, 3] or None, and how many
    non-finite points were dropped on reading."""

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    dropped: int = 0


def _open3d():
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)  # failures are ours to report
    return o3d


@contextlib.contextmanager
def _printed():
    """Collect what is printed inside the block, by Python (open3d's log goes through ``sys.stdout``) and by
    native code to file descriptors 1 and 2 (RPly's errors); yields a list that holds the text once the
    block ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    text, logged, saved = [], io.StringIO(), (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(logged), contextlib.redirect_stderr(logged):
                yield text
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace") + logged.getvalue())


def _o3d_read(path: Path, read):
    """``read(str(path))`` with open3d's messages caught. open3d returns a truncated PLY at its full declared
    size, the missing points uninitialised memory, and says so only in a printed warning: that warning,
    or any other reported failure, becomes a DataError."""
    o3d = _open3d()
    with _printed() as out:
        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Warning)
        try:
            result = read(str(path))
        finally:
            o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    message = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", out[0]).split())
    if re.search(r"fail|error|unexpected end", message.replace(str(path), ""), re.IGNORECASE):
        raise DataError(path, f"a file open3d could not read whole ({message[:300]})",
                        "a complete, well-formed point cloud or mesh file")
    return result


def _finite(path, points: np.ndarray, *extra: np.ndarray | None) -> Cloud:
    """Drop the points that are not finite (organised PCD scans mark empty pixels with NaN)."""
    if len(points) == 0:
        raise DataError(path, "an empty cloud (0 points)", "a point cloud with points")
    ok = np.isfinite(points).all(1)
    if not ok.any():
        raise DataError(path, f"{len(points)} points, none of them finite", "finite x, y, z coordinates")
    kept = points[ok]
    if np.ptp(kept, 0).max() <= 1e-6 * max(1.0, np.abs(kept).max()):
        raise DataError(path, f"{len(kept)} points all at one place ({', '.join(f'{v:g}' for v in kept[0])})",
                        "a cloud with an extent")
    pick = (lambda a: None if a is None or len(a) != len(points) else a[ok].astype(np.float32))
    return Cloud(points[ok].astype(np.float32), *map(pick, extra), dropped=int((~ok).sum()))


def check_pcd_length(path: Path) -> None:
    """A DataError when a PCD file holds fewer points than its header declares (open3d would fill the rest
    with zeros). Checked for ascii and binary data; binary_compressed data carries its own sizes."""
    with open(path, "rb") as f:
        header = {}
        while True:
            line = f.readline()
            if not line:
                return  # no DATA line: open3d reports the file as malformed
            key, _, value = line.decode("ascii", "replace").strip().partition(" ")
            header[key.upper()] = value.split()
            if key.upper() == "DATA":
                break
        body = f.read()
    try:
        declared = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        kind = header["DATA"][0].lower()
        if kind == "ascii":
            found = sum(1 for ln in body.splitlines() if ln.strip())
        elif kind == "binary":
            counts = header.get("COUNT", ["1"] * len(header["SIZE"]))
            point_bytes = sum(int(size) * int(count) for size, count in zip(header["SIZE"], counts))
            found = len(body) // point_bytes
        else:
            return
    except (KeyError, ValueError, IndexError, ZeroDivisionError):
        return  # a header open3d cannot parse either: it reports it
    if found < declared:
        raise DataError(path, f"{found} points where the header declares {declared}", "as many points as the header says")


def read_mesh_points(path: str | Path, n_points: int) -> Cloud:
    """A triangle mesh (PLY, OFF, OBJ) sampled uniformly by area to ``n_points`` points with normals."""
    o3d = _open3d()
    mesh = _o3d_read(Path(path), o3d.io.read_triangle_mesh)
    if len(mesh.triangles) == 0:
        raise DataError(path, f"a mesh of {len(mesh.vertices)} vertices and no faces", "faces to sample points from")
    cloud = mesh.sample_points_uniformly(number_of_points=n_points, use_triangle_normal=True)
    colors = np.asarray(cloud.colors) if mesh.has_vertex_colors() else None
    return _finite(path, np.asarray(cloud.points), colors, np.asarray(cloud.normals))


def read_cloud(path: str | Path, mesh_points: int = 8192) -> Cloud:
    """A point cloud from a PLY/PCD (ascii, binary, binary_compressed)/XYZ/PTS file, a mesh sampled to
    ``mesh_points`` points (OFF, OBJ, or a PLY with faces), or a .npy array [N, 3] (xyz) or [N, 6]
    (xyz + normals). Colours and normals are kept when present; non-finite points are dropped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(path, "no such file", "a point cloud or mesh file")
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(path, f"a file NumPy cannot read ({type(e).__name__}: {e})", "a .npy array") from None
        if not np.issubdtype(a.dtype, np.number):
            raise DataError(path, f"an array of {a.dtype}", "numeric coordinates")
        if a.ndim != 2 or a.shape[1] not in (3, 6):
            raise DataError(path, f"an array of shape {a.shape}", "[N, 3] (xyz) or [N, 6] (xyz + normals)")
        return _finite(path, a[:, :3], None, a[:, 3:6] if a.shape[1] == 6 else None)
    if suffix not in CLOUD_SUFFIXES + MESH_SUFFIXES:
        raise DataError(path, f"a {suffix or 'suffix-less'} file", f"one of {', '.join(SUFFIXES)}")
    o3d = _open3d()
    if suffix in MESH_SUFFIXES or (suffix == ".ply" and len(_o3d_read(path, o3d.io.read_triangle_mesh).triangles)):
        return read_mesh_points(path, mesh_points)
    if suffix == ".pcd":
        check_pcd_length(path)
    pc = _o3d_read(path, lambda p: o3d.io.read_point_cloud(p, remove_nan_points=False, remove_infinite_points=False))
    if len(pc.points) == 0:
        size = path.stat().st_size
        raise DataError(path, f"no points ({size} bytes; empty or not a readable {suffix[1:].upper()})",
                        "a point cloud with points")
    return _finite(path, np.asarray(pc.points), np.asarray(pc.colors) if pc.has_colors() else None,
                   np.asarray(pc.normals) if pc.has_normals() else None)


def read_h5(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An HDF5 file of many clouds (ModelNet40 / ScanObjectNN): ``data`` [S, N, 3+] and, if present,
    ``label`` [S] or [S, 1] -> (points [S, N, 3] float32, labels [S] int64 or None)."""
    require("reading HDF5 point clouds", "3d", "h5py")
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, f"not an HDF5 file ({e})", "an HDF5 file with a 'data' dataset") from None
    with f:
        if "data" not in f:
            raise DataError(path, f"datasets {sorted(f.keys())}", "a 'data' dataset [S, N, 3] (and 'label' [S])")
        data = np.asarray(f["data"])
        labels = np.asarray(f["label"]).reshape(-1).astype(np.int64) if "label" in f else None
    if data.ndim != 3 or data.shape[2] < 3 or data.shape[0] == 0:
        raise DataError(path, f"'data' of shape {data.shape}", "[S >= 1, N, 3 or more]")
    if labels is not None and len(labels) != len(data):
        raise DataError(path, f"{len(labels)} labels for {len(data)} clouds", "one label per cloud")
    return data[..., :3].astype(np.float32), labels


def write_cloud(path: str | Path, points: np.ndarray, normals: np.ndarray | None = None,
                colors: np.ndarray | None = None, compressed: bool = True) -> None:
    """Write a PLY (binary) or PCD (binary_compressed unless ``compressed`` is False) with open3d."""
    o3d = _open3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    if normals is not None:
        pc.normals = o3d.utility.Vector3dVector(np.asarray(normals, np.float64))
    if colors is not None:
        pc.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))
    if not o3d.io.write_point_cloud(str(path), pc, write_ascii=False, compressed=compressed):
        raise OSError(f"open3d could not write {path}")


def read_grid(path: str | Path) -> dict[str, np.ndarray]:
    """A NeRF radiance grid (NeRF-RPN / NeRF-MAE layout): ``rgbsigma`` (W, L, H, 4) with RGB in [0, 1]
    and raw density; optional ``mask`` (W, L, H) (False = padding) and ``labels`` (W, L, H) voxel classes."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(path, f"not a readable .npz ({e})", "an .npz with an 'rgbsigma' array") from None
    with npz:
        if "rgbsigma" not in npz.files:
            raise DataError(path, f"arrays {npz.files}", "an 'rgbsigma' array (W, L, H, 4)")
        grid = np.asarray(npz["rgbsigma"], np.float32)
        if grid.ndim != 4 or grid.shape[-1] != 4:
            raise DataError(path, f"'rgbsigma' of shape {grid.shape}", "(W, L, H, 4): RGB and density per voxel")
        out = {"rgbsigma": grid, "mask": np.ones(grid.shape[:3], bool)}
        for key in ("mask", "labels"):
            if key in npz.files:
                a = np.asarray(npz[key])
                if a.shape != grid.shape[:3]:
                    raise DataError(path, f"'{key}' of shape {a.shape}", f"the grid's shape {grid.shape[:3]}")
                out[key] = a.astype(bool) if key == "mask" else a.astype(np.int64)
    if not np.isfinite(grid[out["mask"]]).all():
        raise DataError(path, "non-finite values in 'rgbsigma'", "finite RGB and density")
    return out
