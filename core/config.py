"""YAML configs into dataclasses, ``a.b=value`` overrides, the resolved config saved with each run."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import logging
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path

import yaml

from scimae.core.errors import DataError, one_line, user_error


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 scalars: only true/false are booleans (YAML 1.1 reads ``amp: off`` as
    False) and a float needs no dot (YAML 1.1 reads ``3e-3`` as a string). A key given twice in one mapping
    is an error (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def parse_yaml(text: str):
    """YAML text -> Python values, safely, with ``ConfigLoader``'s scalars; bad syntax is a ValueError that
    says where."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise ValueError(f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def _check_value(tp, value, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _check_value(arg, value, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"config key {key!r}: expected {tp}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"config key {key!r}: expected None, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else typing.Any
        out = [_check_value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict or tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ValueError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the pipelines' YAML defaults


def pipeline_config(script: str, **sections: type) -> tuple[type, Path]:
    """A pipeline's config class, one section per keyword (``data=``, ``model=``, ``task=``, ``train=``: config
    dataclasses, each built with its defaults), and its YAML defaults, configs/<script's name>.yaml."""
    fields = [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in sections.items()]
    return dataclasses.make_dataclass("Config", fields), CONFIGS / f"{Path(script).stem}.yaml"


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types (keys the class
    lists in ``RETIRED_KEYS``, which earlier versions wrote, are ignored)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = {k: v for k, v in data.items() if k in names or k not in getattr(cls, "RETIRED_KEYS", ())}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; expected one of {[prefix + n for n in names]}")
    return cls(**{k: _check_value(hints[k], v, prefix + k) for k, v in data.items()})


def check_ranges(section: str, cfg, rules: dict) -> None:
    """A ValueError naming ``section.key``, the value and the allowed range for the first of ``rules``
    (key -> (allowed, test)) that ``cfg``'s value fails."""
    for key, (allowed, ok) in rules.items():
        value = getattr(cfg, key)
        if not ok(value):
            raise ValueError(f"{section}.{key} must be {allowed}, got {value!r}")


def one_of(*allowed) -> tuple[str, object]:
    """A ``check_ranges`` rule: the value is one of ``allowed`` ("a, b or c" in the message)."""
    names = [str(a) for a in allowed]
    return (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]), lambda v: v in allowed


POSITIVE = ("> 0", lambda v: v > 0)
AT_LEAST_1 = (">= 1", lambda v: v >= 1)
NON_NEGATIVE = (">= 0", lambda v: v >= 0)
UNIT_INTERVAL = ("in [0, 1)", lambda v: 0 <= v < 1)


def set_key(data: dict, key: str, value) -> None:
    """Set dotted ``key`` (``a.b``) of a nested dict to ``value``, in place."""
    node = data
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"config key {key!r}: {p!r} is not a section")
    node[leaf] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML by ``parse_yaml``) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override must look like key.sub=value, got {item!r}")
        try:
            set_key(data, key, parse_yaml(raw))
        except ValueError as e:
            raise ValueError(f"override {item!r}: {e}") from None
    return data


def load_config(cls, path: str | Path | None = None, overrides: list[str] = (), values: dict | None = None):
    """YAML file (optional) + overrides + ``values`` (dotted key -> value, set as given, never parsed: paths)
    -> validated dataclass ``cls``; unset keys take their defaults."""
    data = {}
    if path is not None:
        if not Path(path).is_file():
            raise DataError(path, "no such file", "a YAML config")
        try:
            data = parse_yaml(Path(path).read_text()) or {}
        except (OSError, ValueError) as e:
            raise DataError(path, f"an unreadable config ({e})", "a YAML mapping") from None
        if not isinstance(data, dict):
            raise DataError(path, f"a {type(data).__name__}", "a YAML mapping")
    apply_overrides(data, list(overrides))
    for key, value in (values or {}).items():
        set_key(data, key, value)
    return from_dict(cls, data)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    from scimae.core.checkpoint import atomic_write

    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    atomic_write(path, lambda p: Path(p).write_text(text))


def field_notes(cls) -> dict[str, str]:
    """Each field's one-line description: the ``# comment`` after it in the class body, from the nearest
    class of ``cls``'s bases that has one."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # a builtin base, or source not shipped
            continue
        comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        body = ast.parse(source).body[0].body
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.lineno in comments:
                notes[node.target.id] = comments[node.lineno]
    return notes


def _type_name(tp) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def describe(cls, values=None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, value, description) for every leaf key of dataclass ``cls``; values from the config
    instance ``values`` (default: the dataclass defaults)."""
    values = values if values is not None else cls()
    hints, notes, rows = typing.get_type_hints(cls), field_notes(cls), []
    for f in dataclasses.fields(cls):
        value = getattr(values, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), value, f"{prefix}{f.name}.")
        else:
            plain = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value] \
                if isinstance(value, (list, tuple)) else value
            shown = yaml.safe_dump(plain, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
            rows.append((prefix + f.name, _type_name(hints[f.name]), shown, notes.get(f.name, "")))
    return rows


def config_help(cls, defaults) -> str:
    """The table of every config key (type, default in the pipeline's YAML, description) that ``--help`` shows."""
    rows = describe(cls, defaults)
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (set any with key.sub=value; defaults from --config):"]
    for key, tp, value, note in rows:
        lines.append(f"  {key:<{width}}  {tp} = {value}" + (f"\n  {'':<{width}}    {note}" if note else ""))
    return "\n".join(lines)


# what a resumed run may set differently from the run's own config.yaml: how long it goes on and how it reports
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.resume", "train.log_every", "train.figure_every", "train.val_every",
                     "train.num_workers", "train.tensorboard")


def run_folder(resume: str | Path) -> Path:
    """The run folder ``--resume`` names (the folder, or its last.pt); a DataError unless it holds a run."""
    path = Path(resume)
    folder = path.parent if path.is_file() else path
    if not (folder / "last.pt").is_file():
        raise DataError(path, "no last.pt" if folder.is_dir() else "no such file or folder",
                        "a run folder (or its last.pt) written by a pipeline")
    return folder


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def resumed_config(cls, resume: str | Path, overrides: list[str] = (), values: dict | None = None):
    """The config of a resumed run: its own config.yaml with the overrides, which may change only
    ``RESUMABLE_CHANGES``."""
    stored = run_folder(resume) / "config.yaml"
    before = load_config(cls, stored)
    cfg = load_config(cls, stored, overrides, values)
    a, b = _flat(dataclasses.asdict(before)), _flat(dataclasses.asdict(cfg))
    changed = [f"{k} is {a.get(k)!r} in {stored}, not {b[k]!r}" for k in b
               if a.get(k) != b[k] and k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"--resume {resume}: {', '.join(changed)}; a resumed run may change only "
                         f"{', '.join(RESUMABLE_CHANGES)}")
    return cfg


def parse_cli(cls, default_config: str | Path, description: str, argv: list[str] | None = None):
    """The command line every pipeline shares.

    ``--config`` (default: the pipeline's YAML), ``--data DIR`` (= data.root=DIR), ``--resume RUN``
    (= train.resume=RUN), ``--init-from EXPORT`` (= train.init_from=EXPORT), ``key.sub=value``, and
    ``--print-config`` (print the resolved YAML and exit). ``--help`` lists every config key. The paths are
    taken as typed, never parsed as YAML. A resumed run starts from its own config.yaml (``resumed_config``).
    The config's ``train.seed``, when it has one, seeds every generator before anything is built or split.
    """
    class Formatter(argparse.RawDescriptionHelpFormatter):
        def format_help(self):  # the key table is built only when --help asks for it
            return super().format_help() + "\n" + config_help(cls, load_config(cls, default_config)) + "\n"

    ap = argparse.ArgumentParser(description=description, formatter_class=Formatter)
    ap.add_argument("--config", default=str(default_config), help="YAML config (default: %(default)s)")
    ap.add_argument("--data", help="a folder of real data instead of the synthetic default")
    ap.add_argument("--resume", help="a run folder (or its last.pt) to continue")
    ap.add_argument("--init-from", help="an export folder whose weights initialise the model")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings, e.g. train.epochs=5")
    args = ap.parse_intermixed_args(argv)  # overrides may come before and after the options
    paths = {key: flag for flag, key in ((args.data, "data.root"), (args.resume, "train.resume"),
                                         (args.init_from, "train.init_from")) if flag}  # as typed, not YAML
    if args.resume:
        if args.config != str(default_config):
            raise ValueError(f"--config {args.config} with --resume: a resumed run reads its own config.yaml")
        cfg = resumed_config(cls, args.resume, args.overrides, paths)
    else:
        cfg = load_config(cls, args.config, args.overrides, paths)
    if args.print_config:
        print(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), end="")
        sys.exit(0)
    if hasattr(getattr(cfg, "train", None), "seed"):
        from scimae.core.engine import seed_everything

        seed_everything(cfg.train.seed)
    return cfg


def run_cli(main) -> None:
    """Run a pipeline's ``main()``; bad input exits with status 2 and one clear message."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr)
        sys.exit(2)
