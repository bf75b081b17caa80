"""Exports (config.json + model.safetensors), training state, atomic writes."""
from __future__ import annotations

import glob
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

from scimae.core.errors import DataError

log = logging.getLogger(__name__)
EXPORT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place durably (the file
    and its folder synced to disk) with the permissions the user's umask gives. Temporary files that a
    crashed writer left for ``path`` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # .<name>.<pid>.<random>.tmp
        pid = stale.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_export(folder: str | os.PathLike, model: nn.Module, config: dict) -> Path:
    """Write ``config.json`` (with the format and scimae versions) and ``model.safetensors`` of the whole model."""
    from safetensors.torch import save_file

    from scimae import __version__

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps({**config, "export_version": EXPORT_VERSION, "scimae_version": __version__}, indent=2,
                      sort_keys=True)
    atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return folder


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_export(folder: str | os.PathLike) -> Path:
    """A local export folder, or a Hugging Face Hub repo id (``owner/name``, fetched into the Hub cache with
    huggingface_hub, or read from that cache offline) -> the local folder holding the export's two files."""
    path = Path(folder)
    if not path.exists() and HUB_ID.match(str(folder)):
        path = _from_hub(str(folder))
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise DataError(path / name, "no such file", f"an export folder with {CONFIG_NAME} and {WEIGHTS_NAME}, "
                                                         "or a Hugging Face Hub repo id")
    return path


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataError(repo_id, "no such local folder (as a Hub repo id it needs huggingface_hub, not installed)",
                        'an export folder, or pip install "scimae[hub]" to load from the Hugging Face Hub') from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as e:  # offline, unknown repo, no access: one message, whatever huggingface_hub raised
        raise DataError(repo_id, f"no such local folder, and the Hugging Face Hub gave no export "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                        "an export folder, or a Hub repo id that is reachable or already in the Hub cache") from None


class Exportable:
    """Hugging Face style saving for a model that knows the config that rebuilds it: ``export_config`` (set by
    whoever builds the model, or by ``from_pretrained``) and ``save_pretrained(folder)``."""

    export_config: dict | None = None

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the export folder (config.json + model.safetensors) that the domain's loaders read."""
        if self.export_config is None:
            raise ValueError(f"this {type(self).__name__} has no export_config; build it with the domain's "
                             "builder, or load it with from_pretrained, to save it")
        return save_export(folder, self, self.export_config)


def load_export(folder: str | os.PathLike, domain: str | None = None,
                keys: tuple[str, ...] = ()) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read an export folder: (config, state_dict on CPU). With ``domain`` and ``keys``, an export of another
    domain or one without the config entries a loader needs is a DataError, not a KeyError deep inside."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_export(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise DataError(folder / CONFIG_NAME, f"invalid JSON ({e})", "the JSON written by save_export") from None
    if not isinstance(config, dict):
        raise DataError(folder / CONFIG_NAME, f"a JSON {type(config).__name__}", "a JSON object")
    version = config.get("export_version", 0)
    if type(version) is not int or version > EXPORT_VERSION:
        raise DataError(folder / CONFIG_NAME, f"export_version {version!r}", f"an integer <= {EXPORT_VERSION}; "
                        "a newer one needs a newer scimae")
    if domain is not None and config.get("domain") != domain:
        raise DataError(folder / CONFIG_NAME, f"an export of domain {config.get('domain')!r}", f"a {domain} export")
    missing = [k for k in keys if k not in config]
    if missing:
        raise DataError(folder / CONFIG_NAME, f"no {', '.join(missing)} (another pipeline's or an older export)",
                        f"an export with {', '.join(keys)}")
    try:
        state = load_file(folder / WEIGHTS_NAME)
    except SafetensorError as e:
        raise DataError(folder / WEIGHTS_NAME, f"an unreadable file ({e})", "a safetensors file") from None
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


MAX_PARAMS = 10 ** 9  # the largest model an export may describe unless SCIMAE_MAX_PARAMS says more


def check_model_size(config: dict, path: Path) -> None:
    """A DataError, before anything is built, when the ``model`` section of an export's config is not a
    mapping of numbers or describes more transformer parameters than ``SCIMAE_MAX_PARAMS`` (default 10^9)."""
    model = config.get("model", {})
    if not isinstance(model, dict):
        raise DataError(path, f"'model' of type {type(model).__name__}", "a mapping of the model's settings")
    sizes = {}
    for key in ("dim", "depth", "decoder_dim", "decoder_depth", "mlp_ratio"):
        value = model.get(key, 4.0 if key == "mlp_ratio" else 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise DataError(path, f"model.{key} = {value!r}", "a non-negative number")
        sizes[key] = float(value)
    per_block = 4 + 2 * sizes["mlp_ratio"]  # attention (4 d^2) and MLP (2 r d^2) weights, in units of d^2
    params = per_block * (sizes["dim"] ** 2 * sizes["depth"] + sizes["decoder_dim"] ** 2 * sizes["decoder_depth"])
    limit = int(os.environ.get("SCIMAE_MAX_PARAMS", MAX_PARAMS))
    if params > limit:
        raise DataError(path, f"a model of about {params:,.0f} transformer parameters", f"at most {limit:,} "
                        "(set SCIMAE_MAX_PARAMS to load a larger one)")


def from_pretrained(folder: str | os.PathLike, build, domain: str | None = None,
                    keys: tuple[str, ...] = ()) -> tuple[nn.Module, dict]:
    """An export folder -> (model, its config): ``build(config)`` makes the architecture the config describes
    and the export's weights fill it, part by part (a part is a top-level module or parameter). Parts the
    export lacks keep their initialisation and parts only the export has are left out, both logged: so a
    fine-tuned export (encoder + head) fills a masked autoencoder's encoder and leaves its decoder fresh.
    Every part both have must match key for key and shape for shape. The config is checked before anything is
    built (:func:`check_model_size`, then the domain's config classes): a bad field is a DataError naming it."""
    config, state = load_export(folder, domain, keys)
    path = Path(folder) / CONFIG_NAME
    check_model_size(config, path)
    try:
        model = build(config)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(path, f"a config the model cannot be built from ({type(e).__name__}: {e})",
                        "the config.json written with the export") from None
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
    model.export_config = config
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


def describe_export(folder: str | os.PathLike) -> dict:
    """What an export holds, read without building the model: its config, the parameter count and tensor
    count from the safetensors header."""
    from safetensors import safe_open

    folder = resolve_export(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    with safe_open(folder / WEIGHTS_NAME, "pt") as f:
        shapes = [f.get_slice(k).get_shape() for k in f.keys()]
    return {"config": config, "parameters": sum(int(np.prod(s)) for s in shapes), "tensors": len(shapes)}
