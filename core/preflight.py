"""Dataset preflight: before the first step, every file is opened far enough to check it, and every problem
is reported at once, one line per file."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scimae.core.checkpoint import atomic_write
from scimae.core.config import one_of
from scimae.core.errors import DataError
from scimae.core.files import cache_root
from scimae.core.progress import progress

log = logging.getLogger(__name__)
ON_ERROR = ("stop", "skip")
ON_ERROR_RULE = one_of(*ON_ERROR)  # for check_ranges
SKIPPED: list[str] = []  # this process's files left out (data.on_error=skip): the Trainer lists them in the run folder


def file_stamp(path: Path) -> str:
    """What identifies a file's content for the cache: path, size and modification time (of each of its
    files for a record named without suffix, such as WFDB's header + signal files)."""
    parts = [path] if path.exists() else sorted(path.parent.glob(glob.escape(path.name) + ".*"))
    stats = [(p.resolve(), p.stat()) for p in parts]
    return "|".join(f"{p}:{st.st_size}:{st.st_mtime_ns}" for p, st in stats) or f"{path}:missing"


def _run(check: Callable[[Path], None], path: Path) -> str | None:
    """``check(path)``: None when it passes, else the DataError's message (other errors propagate)."""
    try:
        check(path)
    except DataError as e:
        return str(e)
    return None


def preflight(files: Sequence[Path], check: Callable[[Path], None], what: str, on_error: str = "stop",
              workers: int | None = None, cache: Path | None = None) -> list[Path]:
    """The files that pass ``check`` (a module-level function raising DataError), in order.

    Files that passed before (same path, size and modification time) are not checked again (the record is
    ``cache``, by default one file per dataset folder in the user cache, holding this dataset's files only).
    ``workers`` > 1 checks in that many processes (default: the CPU count when 64 or more files are to be
    checked). With ``on_error`` 'stop' any bad file stops the run with one DataError listing every bad file;
    with 'skip' they are left out, each named in the log. A dataset of bad files only is refused either way.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    files = [Path(f) for f in files]
    if cache is None:
        folder = os.path.commonpath([str(f.resolve().parent) for f in files]) if files else ""
        cache = cache_root("preflight") / f"{hashlib.sha1(f'{folder}|{what}'.encode()).hexdigest()[:16]}.json"
    try:
        passed = set(json.loads(cache.read_text())) if cache.is_file() else set()
    except (OSError, ValueError):
        passed = set()  # an unreadable record only costs a recheck
    stamps = [file_stamp(f) for f in files]
    todo = [f for f, s in zip(files, stamps) if s not in passed]
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if len(todo) >= 64 else 0
    if min(workers, len(todo)) > 1:
        with ProcessPoolExecutor(workers) as pool:
            found = list(progress(pool.map(_run, [check] * len(todo), todo, chunksize=16), f"checking {what}",
                                  total=len(todo)))
    else:
        found = [_run(check, f) for f in progress(todo, f"checking {what}")]
    problems = dict(zip(todo, found))
    now = {s for f, s in zip(files, stamps) if problems.get(f) is None}  # this dataset's files only
    if now != passed:
        atomic_write(cache, lambda p: Path(p).write_text(json.dumps(sorted(now))))
    bad = {f: m for f, m in problems.items() if m is not None}
    settle(bad, len(files), what, on_error)
    return [f for f in files if f not in bad]


def settle(bad: dict, total: int, what: str, on_error: str) -> None:
    """Act on the ``bad`` items (item -> the DataError's message) found among ``total``: nothing when there are
    none; else one DataError naming them all (every item bad, or ``on_error`` 'stop'), or a warning that
    names them and their record in ``SKIPPED`` ('skip'). For loaders that read every file anyway."""
    if not bad:
        return
    lines = "\n".join(f"  {m}" for m in bad.values())
    if len(bad) == total:
        raise DataError(f"none of the {total} {what} can be used:\n{lines}")
    if on_error == "stop":
        raise DataError(f"{len(bad)} of the {total} {what} cannot be used (data.on_error=skip trains on the "
                        f"rest):\n{lines}")
    log.warning("%d of the %d %s left out (data.on_error=skip):\n%s", len(bad), total, what, lines)
    SKIPPED.extend(bad.values())
