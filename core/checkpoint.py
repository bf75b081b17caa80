"""Exports (config.json + model.safetensors), training state, atomic writes."""
from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import DataError

log = logging.getLogger(__name__)
EXPORT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_export(folder: str | os.PathLike, model: nn.Module, config: dict) -> Path:
    """Write ``config.json`` (with a format version) and ``model.safetensors`` of the whole model."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps({**config, "export_version": EXPORT_VERSION}, indent=2, sort_keys=True)
    atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return folder


def load_export(folder: str | os.PathLike, domain: str | None = None,
                keys: tuple[str, ...] = ()) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read an export folder: (config, state_dict on CPU). With ``domain`` and ``keys``, an export of another
    domain or one without the config entries a loader needs is a DataError, not a KeyError deep inside."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise DataError(folder / name, "no such file", f"an export folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise DataError(folder / CONFIG_NAME, f"invalid JSON ({e})", "the JSON written by save_export") from None
    try:
        state = load_file(folder / WEIGHTS_NAME)
    except SafetensorError as e:
        raise DataError(folder / WEIGHTS_NAME, f"an unreadable file ({e})", "a safetensors file") from None
    if config.get("export_version", 0) > EXPORT_VERSION:
        raise DataError(folder / CONFIG_NAME, f"export_version {config['export_version']}",
                        f"<= {EXPORT_VERSION}; update scimae")
    if domain is not None and config.get("domain") != domain:
        raise DataError(folder / CONFIG_NAME, f"an export of domain {config.get('domain')!r}", f"a {domain} export")
    missing = [k for k in keys if k not in config]
    if missing:
        raise DataError(folder / CONFIG_NAME, f"no {', '.join(missing)} (another pipeline's or an older export)",
                        f"an export with {', '.join(keys)}")
    return config, state


def match_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, list, list]:
    """(the tensors of ``state`` that fit ``model``, missing keys, unexpected keys); a tensor whose shape
    differs counts as missing."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k not in own or own[k].shape == v.shape}
    return usable, sorted(own.keys() - usable.keys()), sorted(usable.keys() - own.keys())


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> tuple[list, list]:
    """Load ``state`` into ``model``; report missing and unexpected keys (raise on them, loading nothing, if
    ``strict``). Tensors whose shape differs are reported and left out."""
    usable, missing, unexpected = match_weights(model, state)
    if strict and (missing or unexpected):
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(usable, strict=False)
    if missing:
        log.warning("weights: %d keys missing (kept as initialised): %s", len(missing), _short(missing))
    if unexpected:
        log.info("weights: %d keys unused: %s", len(unexpected), _short(unexpected))
    return missing, unexpected


def from_pretrained(folder: str | os.PathLike, build, domain: str | None = None,
                    keys: tuple[str, ...] = ()) -> tuple[nn.Module, dict]:
    """An export folder -> (model, its config): ``build(config)`` makes the architecture the config describes
    and the export's weights fill it, part by part (a part is a top-level module or parameter). Parts the
    export lacks keep their initialisation and parts only the export has are left out, both logged: so a
    fine-tuned export (encoder + head) fills a masked autoencoder's encoder and leaves its decoder fresh.
    Every part both have must match key for key and shape for shape."""
    config, state = load_export(folder, domain, keys)
    model = build(config)
    part = lambda key: key.split(".", 1)[0]  # noqa: E731
    own, given = {part(k) for k in model.state_dict()}, {part(k) for k in state}
    shared = own & given
    if not shared:
        raise DataError(Path(folder) / WEIGHTS_NAME, f"weights of {sorted(given)}", f"weights for {sorted(own)}")
    usable, missing, unexpected = match_weights(model, {k: v for k, v in state.items() if part(k) in shared})
    missing = [k for k in missing if part(k) in shared]
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(usable, strict=False)
    if own - shared:
        log.info("%s: no weights for %s; they keep their initialisation", folder, sorted(own - shared))
    if given - shared:
        log.info("%s: weights of %s left out (not in this model)", folder, sorted(given - shared))
    return model, config


def _short(keys, n=6) -> str:
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n})" if len(keys) > n else "")


def rng_state() -> dict:
    """Every global RNG state, as tensors and plain Python values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(path: str | os.PathLike, state: dict) -> Path:
    """Atomically write a training state (model, optimizer, scheduler, counters, RNG) with torch.save."""
    return atomic_write(path, lambda p: torch.save(state, p))


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a training state with ``torch.load(weights_only=True)``: no pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file", "a training state written by scimae (last.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say so plainly
        raise DataError(path, f"an unreadable training state ({type(e).__name__}: {e})",
                        "a training state written by scimae") from None


def cache_root(name: str) -> Path:
    """A folder for generated data in the user cache ($SCIMAE_CACHE, default ~/.cache/scimae)."""
    return Path(os.environ.get("SCIMAE_CACHE", Path.home() / ".cache" / "scimae")) / name


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
