"""The ``scimae`` command (also ``python -m scimae``).

  scimae pretrain|finetune <domain> [--data DIR] [key.sub=value ...]   runs pipelines/<domain>_<verb>.py
  scimae predict geo [...]  /  scimae reconstruct brats [...]          the inference pipelines
  scimae info EXPORT                                                   what an export holds
  scimae convert --from mae|prithvi|pointmae|stmem CHECKPOINT --out EXPORT   a published checkpoint as an export
  scimae export-onnx EXPORT [--out FILE] [--pooling mean]             the encoder as an ONNX graph (onnxruntime)
  scimae list [RUNS]                                                   runs under RUNS (default: runs/)

A pipeline run this way is the same code, with the same arguments, as ``python pipelines/<name>.py``;
``scimae <verb> <domain> --help`` lists its config keys.
"""
from __future__ import annotations

import pkgutil
import sys
from pathlib import Path

ALIASES = {"brain_mri": "brats", "mri": "brats", "remote_sensing": "geo", "point_cloud": "pointcloud",
           "scene3d": "pointcloud"}


def pipelines() -> dict[str, list[str]]:
    """verb -> the domains that have a pipeline for it, from the modules of scimae.pipelines."""
    from scimae import pipelines as package

    table: dict[str, list[str]] = {}
    for module in pkgutil.iter_modules(package.__path__):
        domain, _, verb = module.name.rpartition("_")
        if domain:
            table.setdefault(verb, []).append(domain)
    return {verb: sorted(domains) for verb, domains in sorted(table.items())}


def usage() -> str:
    table = pipelines()
    lines = [__doc__.strip(), "", "pipelines:"]
    lines += [f"  scimae {verb} {{{','.join(domains)}}}" for verb, domains in table.items()]
    return "\n".join(lines)


def run_pipeline(verb: str, domain: str, args: list[str]) -> None:
    import importlib

    from scimae.core.config import run_cli

    table = pipelines()
    domain = ALIASES.get(domain, domain)
    if domain not in table[verb]:
        sys.exit(f"error: no {verb} pipeline for {domain!r}; one of {', '.join(table[verb])}")
    module = importlib.import_module(f"scimae.pipelines.{domain}_{verb}")
    sys.argv = [f"scimae {verb} {domain}", *args]  # argparse names the command in --help and errors
    run_cli(module.main)


def info(folder: str) -> None:
    """Print what an export holds: domain, groups and normalisation, layout, size and provenance."""
    from scimae.core.checkpoint import describe_export

    found = describe_export(folder)
    config = found["config"]
    print(f"export      {folder}")
    print(f"domain      {config.get('domain')}" + (f" ({config['kind']})" if "kind" in config else ""))
    for key in ("modalities", "channels", "groups", "joints", "classes", "diagnoses", "actions"):
        if key in config:
            value = config[key]
            names = [g["name"] + "=" + "+".join(g["bands"]) for g in value] if key == "groups" else value
            print(f"{key:<11} {', '.join(map(str, names)) if isinstance(names, list) else names}")
    for band in config.get("bands", []):
        print(f"  band {band['name']}: kind {band.get('kind')}, mean {band.get('mean')}, std {band.get('std')}")
    if "normalization" in config:
        print(f"normalised  {config['normalization']}")
    layout = {k: v for k, v in config.items() if k in ("roi", "spacing", "patch_size", "patch", "window", "fs", "window_s",
                                                         "grid", "n_points", "n_groups", "group_size", "frames", "bodies")}
    print("layout      " + ", ".join(f"{k} {v}" for k, v in layout.items()))
    model = config.get("model", {})
    mask = model.get("mask") or {}
    print(f"model       encoder {model.get('dim')} x {model.get('depth')} ({model.get('heads')} heads), "
          f"decoder {model.get('decoder_dim')} x {model.get('decoder_depth')}; "
          f"mask {mask.get('strategy')} {mask.get('ratio')}")
    print(f"parameters  {found['parameters']:,} in {found['tensors']} tensors")
    source = config.get("source")
    if source:
        print(f"converted   from {source['format']} ({source['file']}): {source['conventions']}")
    trained = config.get("training")
    if trained:
        print(f"written by  {trained.get('pipeline')} at step {trained.get('step')} (epoch {trained.get('epoch')}), "
              f"scimae {config.get('scimae_version')}")
    if "task" in config:
        print(f"task        {config['task']}")


def list_runs(root: str) -> None:
    """Print every run under ``root`` with its last train loss and validation scores."""
    from scimae.core.files import list_runs as find

    runs = find(root)
    if not runs:
        print(f"no runs under {root}")
    for run in runs:
        train, val = run["train"] or {}, run["val"] or {}
        shown = {k: train.get(k) for k in ("step", "loss")}  # and every validation score but per-group ones
        shown |= {k: v for k, v in val.items() if k not in ("kind", "epoch", "step") and "/" not in k}
        scores = [f"{k}={float(v):.4g}" for k, v in shown.items() if v not in ("", None)]
        print(f"{run['run']}{'  [export]' if run['export'] else ''}  " + " ".join(scores))


def convert(args: list[str]) -> None:
    """Write a published checkpoint as a scimae export."""
    import argparse

    ap = argparse.ArgumentParser(prog="scimae convert", description="A published checkpoint as a scimae export: "
                                 "every tensor mapped, the architecture read from the tensors, the source's "
                                 "conventions recorded in config.json.")
    ap.add_argument("--from", dest="source", required=True, choices=["mae", "prithvi", "pointmae", "stmem"],
                    help="mae: a facebookresearch/mae ViT (pretraining checkpoint, or a fine-tuned classifier's "
                         "encoder); prithvi: a Prithvi-EO-1.0/2.0 MAE; pointmae: a Point-MAE pretraining checkpoint; "
                         "stmem: an ST-MEM (ECG) pretraining checkpoint")
    ap.add_argument("checkpoint", help="the checkpoint file (.pth/.pt read with weights_only=True, or .safetensors)")
    ap.add_argument("--out", required=True, help="the export folder to write (must not exist)")
    ap.add_argument("--heads", type=int, help="encoder attention heads (known for ViT-B/L/H widths and Point-MAE's 384)")
    ap.add_argument("--decoder-heads", type=int, help="decoder attention heads (known for MAE's 512-wide decoder and "
                                                      "Point-MAE's 384)")
    ap.add_argument("--norm-eps", type=float, default=1e-6, help="prithvi: LayerNorm eps (the released code's 1e-6; "
                                                                 "TerraTorch's file default is 1e-5)")
    ap.add_argument("--groups", type=int, default=64, help="pointmae: groups per cloud (not in the tensors; Point-MAE's 64)")
    ap.add_argument("--points", type=int, default=1024, help="pointmae: points per cloud (Point-MAE's 1024)")
    a = ap.parse_args(args)
    if a.source == "stmem":
        from scimae.domains.cardiac.model import convert_stmem

        out = convert_stmem(a.checkpoint, a.out)
    elif a.source == "pointmae":
        from scimae.domains.scene3d.model import convert_point_mae

        out = convert_point_mae(a.checkpoint, a.out, a.heads, a.decoder_heads, a.groups, a.points)
    elif a.source == "prithvi":
        from scimae.domains.remote_sensing.model import convert_prithvi

        out = convert_prithvi(a.checkpoint, a.out, a.heads, a.decoder_heads, a.norm_eps)
    else:
        from scimae.domains.remote_sensing.model import convert_mae

        out = convert_mae(a.checkpoint, a.out, a.heads, a.decoder_heads)
    print(f"wrote {out}")


LOADERS = {"cardiac": ("scimae.domains.cardiac.model", "load_cardiac_mae"),
           "remote_sensing": ("scimae.domains.remote_sensing.model", "load_geo_mae"),
           "brain_mri": ("scimae.domains.brain_mri.model", "load_brain_mae"),
           "skeleton": ("scimae.domains.skeleton.model", "load_skeleton_mae"),
           "scene3d": ("scimae.domains.scene3d.model", "load_point_mae")}


def export_onnx(args: list[str]) -> None:
    """Write a pretraining export's encoder as an ONNX graph and check it against torch."""
    import argparse
    import importlib

    import torch

    from scimae.core.checkpoint import describe_export
    from scimae.core.heads import Pooler
    from scimae.core.onnx import OnnxEncoder, export_onnx

    ap = argparse.ArgumentParser(prog="scimae export-onnx", description="The encoder's mask-free path of a pretraining "
                                 "(or converted) export as an ONNX graph with a dynamic batch axis; inputs are the "
                                 "domain's batch tensors, outputs the pooled embedding, the tokens and their validity.")
    ap.add_argument("export", help="the export folder")
    ap.add_argument("--out", help="the .onnx file to write (default: encoder.onnx in the export folder, or here for a "
                                  "Hub repo id; never overwritten)")
    ap.add_argument("--pooling", choices=Pooler.KINDS[:4], help="the embedding's pooling (default: the export's: "
                                                               "mean, or mean_norm for ST-MEM's layout)")
    a = ap.parse_args(args)
    config = describe_export(a.export)["config"]
    domain = config.get("domain")
    if domain not in LOADERS:
        sys.exit(f"error: {a.export} is a {domain!r} export; ONNX export knows {', '.join(LOADERS)}")
    module, name = LOADERS[domain]
    mae, _ = getattr(importlib.import_module(module), name)(a.export)
    pooling = a.pooling or ("mean_norm" if config.get("model", {}).get("layout") == "stmem" else "mean")
    local = Path(a.export)
    out = export_onnx(mae.encoder, a.out or (local / "encoder.onnx" if local.is_dir() else "encoder.onnx"), pooling)
    example = mae.encoder.tokenizer.example_inputs(3)
    with torch.no_grad():
        ref = Pooler(mae.encoder.dim, pooling)(mae.encoder.eval()(example)).numpy()
    diff = float(abs(OnnxEncoder(out).embed(example) - ref).max())
    print(f"wrote {out} (onnxruntime against torch on a random batch: max difference {diff:.1e})")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        from scimae import __version__

        print(f"scimae {__version__}")
        return
    verb, rest = argv[0], argv[1:]
    if verb == "info":
        if len(rest) != 1:
            sys.exit("usage: scimae info EXPORT (an export folder or a Hugging Face Hub repo id)")
        from scimae.core.config import run_cli

        sys.argv = ["scimae info", *rest]
        run_cli(lambda: info(rest[0]))
    elif verb == "convert":
        from scimae.core.config import run_cli

        sys.argv = ["scimae convert", *rest]
        run_cli(lambda: convert(rest))
    elif verb == "export-onnx":
        from scimae.core.config import run_cli

        sys.argv = ["scimae export-onnx", *rest]
        run_cli(lambda: export_onnx(rest))
    elif verb == "list":
        list_runs(rest[0] if rest else "runs")
    elif verb in pipelines():
        if not rest or rest[0].startswith("-"):
            sys.exit(f"usage: scimae {verb} {{{','.join(pipelines()[verb])}}} [--help] [options]")
        run_pipeline(verb, rest[0], rest[1:])
    else:
        sys.exit(f"error: unknown command {verb!r}\n\n{usage()}")


if __name__ == "__main__":
    main()
