"""Where things live on disk: generated datasets in the user cache, run folders and their exports."""
from __future__ import annotations

import os
import re
from pathlib import Path

from scimae.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from scimae.core.errors import DataError


def cache_root(name: str) -> Path:
    """A folder for generated data in the user cache ($SCIMAE_CACHE, default ~/.cache/scimae)."""
    return Path(os.environ.get("SCIMAE_CACHE", Path.home() / ".cache" / "scimae")) / name


def find_files(root: str | os.PathLike, keep) -> list[Path]:
    """The files under ``root`` for which ``keep(path)`` holds, sorted (links to folders are not followed).
    A folder that cannot be read is a DataError naming it, never silently left out."""
    def refuse(e: OSError):
        raise DataError(e.filename, f"a folder that cannot be read ({e.strerror})", "read access to every folder "
                        "of the dataset")

    found = []
    for folder, _, names in os.walk(root, onerror=refuse):
        found += [p for p in (Path(folder) / n for n in names) if keep(p)]
    return sorted(found)


def build_folder_once(root: str | os.PathLike | None, key: str, fill, name: str = "dataset") -> Path:
    """Make ``root`` complete or not at all: ``fill(tmp)`` writes into a temporary sibling folder that then
    replaces ``root`` with a COMPLETE marker holding ``key`` (what was built, e.g. "60 tiles, seed 0").
    A complete ``root`` with the same key is returned as it is; one built with another key is an error.
    Processes that build the same folder at once (torchrun ranks) all return it; the first one's stays.
    ``root`` None: ``<cache_root(name)>/<key>``, one folder per key."""
    import shutil

    root = Path(root) if root is not None else cache_root(name) / re.sub(r"[^\w.-]+", "_", key)
    marker = root / "COMPLETE"
    if marker.is_file():
        found = marker.read_text().strip()
        if found != key:
            raise DataError(root, f"a generated dataset of {found}", f"{key}; give another folder")
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(root, "a folder with other files", "an empty or new folder for the generated dataset")
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    (tmp / "COMPLETE").write_text(key + "\n")
    try:
        if root.exists():
            root.rmdir()  # an empty folder named for it
        tmp.rename(root)
    except OSError:  # another process (a torchrun rank) completed the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (marker.is_file() and marker.read_text().strip() == key):
            raise
    return root


def newest_export(runs: str | os.PathLike, make=None) -> Path:
    """The most recent export under ``runs`` (``runs/<run>/export``). With none there, ``make()`` (which
    trains one) is called first, if given."""
    def find():
        found = sorted(Path(runs).glob("*/export/" + WEIGHTS_NAME), key=lambda p: p.stat().st_mtime)
        return found[-1].parent if found else None

    if find() is None and make is not None:
        make()
    if find() is None:
        raise DataError(runs, "no run with an export", "a finished run, or --model pointing at an export folder")
    return find()


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """Every run folder under ``root`` (any depth: ``runs/<pipeline>/<run>``), oldest first: its path, whether
    it has an export, and the last train and validation rows of its metrics.csv."""
    import csv

    runs = []
    for metrics in sorted(Path(root).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with metrics.open(newline="") as f:
            rows = list(csv.DictReader(f))
        last = {kind: next((r for r in reversed(rows) if r.get("kind") == kind), None) for kind in ("train", "val")}
        runs.append({"run": metrics.parent, "export": (metrics.parent / "export" / CONFIG_NAME).is_file(), **last})
    return runs
