"""Reading and writing brain MRI: BraTS case discovery, CSV manifests, validated NIfTI I/O."""
from __future__ import annotations

import csv
import io
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from scimae.core.errors import DataError
from scimae.core.files import find_files

log = logging.getLogger(__name__)

MODALITIES = ["t1", "t1ce", "t2", "flair"]  # canonical order = group ids of the model
ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "fla": "flair", "t2f": "flair",
    "seg": "seg",
}
NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
CASE_COLUMNS = ("case_id", "case", "subject", "id")


@dataclass
class Case:
    """One subject: a path per available modality, an optional segmentation, and label values."""

    case_id: str
    paths: dict[str, str]  # canonical modality -> file
    seg: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"case_id": self.case_id, "paths": dict(self.paths), "seg": self.seg, "labels": dict(self.labels)}


def canonical_modality(name: str) -> str | None:
    """'T1Gd', 't1c', 'FLAIR', 't2f' ... -> the canonical name (or 'seg'); None if unknown."""
    return ALIASES.get(name.lower())


def _parse_name(path: Path) -> tuple[str, str] | None:
    """'<case>_<mod>[_extra].nii.gz' or '<case>-<mod>.nii.gz' -> (case, modality); the last alias wins."""
    stem = NIFTI.sub("", path.name)
    parts = re.split(r"([_-])", stem)
    for i in range(len(parts) - 1, 1, -2):
        mod = canonical_modality(parts[i])
        if mod:
            return "".join(parts[: i - 1]), mod
    return None


def discover_cases(root: str | Path, outside: bool = False) -> list[Case]:
    """Cases under a BraTS-style folder (2020/2021 ``_t1ce``, 2023 ``-t1c``, aliases), sorted by id.

    A ``labels.csv`` in ``root`` (a case-id column and label columns) adds labels; a ``*.csv`` given
    as ``root`` is read as a manifest instead (``outside``: see :func:`read_manifest`).
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return read_manifest(root, outside)
    if not root.is_dir():
        raise DataError(root, "a file that is not a .csv" if root.exists() else "no such folder",
                        "a folder of NIfTI cases or a CSV manifest")
    found: dict[str, dict[str, str]] = {}
    for path in find_files(root, lambda p: NIFTI.search(p.name)):
        parsed = _parse_name(path)
        if parsed is None:
            log.debug("skipping %s: no modality in its name", path)
            continue
        case, mod = parsed
        if mod in found.setdefault(case, {}):
            raise DataError(path, f"a second {mod} file for case {case} (first: {found[case][mod]})", "one file per modality")
        found[case][mod] = str(path)
    if not found:
        raise DataError(root, "no NIfTI files named <case>_<modality>.nii[.gz]",
                        f"files with a modality among {sorted(ALIASES)}")
    labels = read_labels(root / "labels.csv") if (root / "labels.csv").is_file() else {}
    cases = []
    for case_id, files in sorted(found.items()):
        seg = files.pop("seg", None)
        if not files:
            raise DataError(seg, f"a segmentation for case {case_id} but no image", f"at least one of {MODALITIES}")
        cases.append(Case(case_id, files, seg, labels.get(case_id, {})))
    return cases


def _case_column(header: list[str], path: Path) -> str:
    for name in header:
        if name.lower() in CASE_COLUMNS:
            return name
    raise DataError(path, f"columns {header}", f"a case-id column named one of {list(CASE_COLUMNS)}")


def _csv(path: Path) -> csv.DictReader:
    """The rows of a UTF-8 CSV file (a byte-order mark allowed); an unreadable one is a DataError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"an unreadable CSV file ({e})", "a UTF-8 CSV file") from None
    return csv.DictReader(io.StringIO(text, newline=""))


def read_labels(path: str | Path) -> dict[str, dict[str, str]]:
    """labels.csv -> {case_id: {column: value}} (empty values left out)."""
    path = Path(path)
    reader = _csv(path)
    key = _case_column(reader.fieldnames or [], path)
    return {row[key]: {k: v for k, v in row.items() if k != key and v not in ("", None)} for row in reader}


def read_manifest(path: str | Path, outside: bool = False) -> list[Case]:
    """A CSV with a case-id column, one column per modality (any alias; paths relative to the CSV),
    an optional ``seg`` column, and label columns. Paths must lie in the CSV's folder (or below it) unless
    ``outside``."""
    path = Path(path)
    reader = _csv(path)
    header = reader.fieldnames or []
    key = _case_column(header, path)
    cases = []
    for line, row in enumerate(reader, start=2):
        paths, seg, labels = {}, None, {}
        for col, value in row.items():
            if col == key or value in ("", None):
                continue
            mod = canonical_modality(col)
            if mod is None:
                labels[col] = value
                continue
            file = (path.parent / value).resolve()
            if not outside and not file.is_relative_to(path.parent.resolve()):
                raise DataError(path, f"line {line} names {mod} file {value}, outside the manifest's folder",
                                "paths inside it (data.manifest_outside=true allows others)")
            if not file.is_file():
                raise DataError(path, f"line {line} names {mod} file {value}, which does not exist",
                                "paths to existing NIfTI files (relative to the manifest)")
            if mod == "seg":
                seg = str(file)
            else:
                paths[mod] = str(file)
        if not paths:
            raise DataError(path, f"line {line} (case {row[key]}) with no image path", f"at least one of {MODALITIES}")
        cases.append(Case(row[key], paths, seg, labels))
    if not cases:
        raise DataError(path, "no rows", "one row per case")
    return cases


MAX_VOXELS = 2 ** 30  # a 1024^3 volume: far beyond any MRI, so a larger header is corrupt


def check_declared_size(path: Path, img) -> None:
    """A DataError, before anything is allocated, when a NIfTI header declares an absurd size or (uncompressed)
    more data than the file holds."""
    voxels = int(np.prod(img.shape, dtype=np.float64))
    if voxels > MAX_VOXELS:
        raise DataError(path, f"a header declaring {' x '.join(map(str, img.shape))} = {voxels:,} voxels",
                        f"at most {MAX_VOXELS:,} voxels (a corrupt header?)")
    if not path.name.endswith(".gz"):
        needed = int(getattr(img.dataobj, "offset", 0)) + voxels * img.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise DataError(path, f"{path.stat().st_size:,} bytes where the header's {img.shape} "
                                  f"{img.get_data_dtype()} volume needs {needed:,}", "a complete .nii file")


def read_volume(path: str | Path, label: bool = False) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """A 3D NIfTI as (float32 array, 4x4 affine, header), checked.

    Non-finite voxels (NaN, inf) are zeroed (so they are excluded from the non-zero statistics) with a
    warning saying how many; a 4D image with one volume is squeezed; anything else that is not a usable 3D volume raises
    a DataError. A ``label`` volume may be all zero (no lesion).
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        check_declared_size(path, img)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise DataError(path, "no such file", "a NIfTI file") from None
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(path, f"an unreadable or truncated NIfTI ({type(e).__name__}: {e})",
                        "a complete .nii or .nii.gz file") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"a {data.ndim}D image of shape {list(data.shape)}", "a 3D volume")
    bad = ~np.isfinite(data)  # NaN, inf, or beyond float32
    if bad.all():
        raise DataError(path, "only non-finite voxels (NaN or inf)", "a volume with finite intensities")
    if bad.any():
        log.warning("%s: %d non-finite voxels (NaN or inf) set to 0 and excluded from normalisation", path, int(bad.sum()))
        data = np.where(bad, 0.0, data).astype(np.float32)
    if not label and not data.any():
        raise DataError(path, "an all-zero volume", "a volume with signal")
    if not label and data.min() == data.max():
        raise DataError(path, f"a constant volume (every voxel {data.flat[0]:g})", "a volume with signal")
    return data, img.affine, img.header


def write_volume(path: str | Path, data: np.ndarray, affine: np.ndarray, header=None, overwrite: bool = False) -> Path:
    """Write a NIfTI with ``affine`` (and the input's header fields, e.g. units); float64 is stored as float32."""
    from scimae.core.checkpoint import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    hdr = header.copy() if header is not None else None
    data = np.asarray(data)
    data = data.astype(np.float32) if data.dtype in (np.float64, np.float16) else data
    img = nib.Nifti1Image(data, affine, hdr)
    img.set_data_dtype(data.dtype)
    if hdr is not None:
        img.set_qform(affine, int(hdr["qform_code"]) or 1)
        img.set_sform(affine, int(hdr["sform_code"]) or 1)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    atomic_write(path, lambda p: nib.save(img, p + suffix) or Path(p + suffix).replace(p))
    return path
