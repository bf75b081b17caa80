"""What the domain quality benchmarks share: their command line, the smoke-run sizes of --quick, the torch
threads, the split written once as folders of links, and pipelines run as a user runs them."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from scimae.core.evaluate import format_table, write_evaluation


def parser(doc: str, domain: str, pretrain_epochs: int, finetune_epochs: int | None = 3) -> argparse.ArgumentParser:
    """--out, --pretrain-epochs, --finetune-epochs (unless None), --draws, --seeds, --lrs, --parallel and --quick; the
    benchmark adds its own options."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=f"runs/benchmark_{domain}")
    ap.add_argument("--pretrain-epochs", type=int, default=pretrain_epochs)
    if finetune_epochs is not None:
        ap.add_argument("--finetune-epochs", type=int, default=finetune_epochs)
    ap.add_argument("--draws", type=int, default=20, help="label draws per probe budget")
    ap.add_argument("--seeds", type=int, default=3, help="random-init and fine-tuning seeds")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1.5e-4, 5e-4, 1.5e-3],
                    help="fine-tuning learning rates, one chosen per arm on held-back training labels")
    ap.add_argument("--parallel", type=int, default=min(2, cores()),
                    help="fine-tuning runs at a time, each with its share of the cores (small models use two "
                         "processes of one thread better than one of two)")
    ap.add_argument("--quick", action="store_true", help="a minute-long smoke run (tests)")
    return ap


def cores() -> int:
    """The cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def parse(ap: argparse.ArgumentParser, **quick) -> argparse.Namespace:
    """The arguments; with --quick, the benchmark's smoke-run sizes (``quick``) and one epoch each, two draws,
    two seeds and two learning rates. Torch uses as many threads as this process has cores; ``args.threads`` is
    each parallel fine-tuning run's share."""
    args = ap.parse_args()
    if args.quick:
        epochs = {k: 1 for k in ("pretrain_epochs", "finetune_epochs") if hasattr(args, k)}
        vars(args).update({**epochs, "draws": 2, "seeds": 2, "lrs": args.lrs[:2], **quick})
    torch.set_num_threads(cores())
    args.threads = max(1, cores() // max(1, args.parallel))
    return args


def link_files(folder: Path, files: Iterable[Path], subfolder=lambda f: "") -> Path:
    """``folder`` holding a link to each of ``files`` (in ``subfolder(file)``, e.g. its class): a split, made once."""
    for f in files:
        (folder / subfolder(f)).mkdir(parents=True, exist_ok=True)
        (folder / subfolder(f) / f.name).symlink_to(f.resolve())
    return folder


def run_pipeline(name: str, args: list[str], out: Path, run_name: str, threads: int | None = None) -> Path:
    """Run ``python -m scimae.pipelines.<name> ARGS`` in its own process, as a user would, into ``out/run_name``
    (with ``threads`` torch threads; default: one per core); return the export it wrote there."""
    cmd = [sys.executable, "-m", f"scimae.pipelines.{name}", *args, f"train.out_dir={out}", f"train.run_name={run_name}"]
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = subprocess.run(cmd, env=env).returncode
    if code:
        raise SystemExit(f"{name} stopped with exit status {code}: {' '.join(cmd)}")
    return out / run_name / "export"


def tree_memory(pid: int) -> int:
    """Bytes of memory of process ``pid`` and its descendants (Linux /proc): the sum of their proportional set sizes
    (PSS: a page shared by n processes, such as the libraries and weights forked workers share with their parent,
    counts 1/n in each), or of their resident set sizes where PSS is not available."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grown = {pid}, True
    while grown:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grown = bool(more)
    total = 0
    for p in tree:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:])
            total += int(fields["Pss"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            try:
                total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                continue
    return total


def run_with_peak_memory(cmd: list[str], env: dict | None = None) -> int:
    """Run ``cmd`` and return the peak memory of its process tree (:func:`tree_memory`, sampled every 0.2 s); exit
    if it fails."""
    import time

    child = subprocess.Popen(cmd, env=env)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_memory(child.pid))
        time.sleep(0.2)
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} stopped with exit status {child.returncode}")
    return peak


def onnx_throughput(encoder, batch: dict, folder: Path, rounds: int = 5) -> None:
    """Export ``encoder`` to ONNX in ``folder`` and print the pooled embedding's rate on ``batch`` in torch (the
    gathered path, inference mode) and in onnxruntime (the same threads), with their largest difference."""
    import time

    import numpy as np

    from scimae.core.heads import Pooler
    from scimae.core.onnx import OnnxEncoder, export_onnx

    encoder.eval()
    onnx = OnnxEncoder(export_onnx(encoder, folder / "encoder.onnx"), threads=torch.get_num_threads())
    pool = Pooler(encoder.dim, "mean")
    rates = {}
    for name, run in (("torch", lambda: pool(encoder(batch)).numpy()), ("onnxruntime", lambda: onnx.embed(batch))):
        with torch.inference_mode():
            out = run()
            t = time.perf_counter()
            for _ in range(rounds):
                run()
        rates[name] = rounds * len(out) / (time.perf_counter() - t)
        rates[name + "_out"] = out
    diff = float(np.abs(rates["torch_out"] - rates["onnxruntime_out"]).max())
    print(f"encoder on CPU, batch of {len(out)}: torch {rates['torch']:.0f}/s, onnxruntime {rates['onnxruntime']:.0f}/s "
          f"-> onnxruntime / torch = {rates['onnxruntime'] / rates['torch']:.2f} (largest difference {diff:.1e})")


def report(rows: list, out: Path, heading: str, p_value: float, seeds: int, chosen: dict) -> None:
    """Write evaluation.csv and evaluation.png into ``out``; print the heading, the table and the fine-tuning
    comparison."""
    csv_path, png = write_evaluation(rows, out)
    print(heading)
    print(format_table(rows))
    print(f"fine-tuning, pretrained vs scratch, McNemar p = {p_value:.3g} (pooled over {seeds} seeds); "
          f"learning rates chosen on held-back training labels: {chosen}")
    print(f"wrote {csv_path} and {png}")


def synthesis_row(true, synthesis, baseline, spread) -> tuple:
    """One item's synthesis scored on its values (arrays of one shape): PSNR of the synthesis and of the ``baseline``
    against ``true`` (MONAI's, the peak being the truth's range), Spearman's rank correlation of the ``spread`` with
    the absolute error, and the flattened spread and error for pooling (:func:`synthesis_summary`)."""
    import numpy as np
    from monai.metrics import PSNRMetric
    from scipy.stats import spearmanr

    true, error, spread = np.ravel(true), np.abs(np.ravel(synthesis) - np.ravel(true)), np.ravel(spread)
    metric = PSNRMetric(float(true.max() - true.min()))

    def psnr(image) -> float:
        return float(metric(torch.as_tensor(np.ravel(image))[None], torch.as_tensor(true)[None]))

    return psnr(synthesis), psnr(baseline), spearmanr(spread, error)[0], spread, error


def synthesis_summary(what: str, rows: list[tuple], draws: int) -> dict:
    """Prints and returns the mean PSNRs of :func:`synthesis_row`'s rows, and the Spearman correlation pooled over
    every value of every item and per item."""
    import numpy as np
    from scipy.stats import spearmanr

    per_item = [r[2] for r in rows]
    r = {"items": len(rows), "psnr": float(np.mean([r[0] for r in rows])),
         "baseline_psnr": float(np.mean([r[1] for r in rows])),
         "spearman": float(spearmanr(np.concatenate([r[3] for r in rows]), np.concatenate([r[4] for r in rows]))[0]),
         "spearman_per_item": float(np.mean(per_item))}
    print(f"{what}, {len(rows)} held out: PSNR synthesis {r['psnr']:.2f} dB, baseline {r['baseline_psnr']:.2f} dB; "
          f"uncertainty ({draws} syntheses) vs absolute error, Spearman: pooled {r['spearman']:.3f}, per item "
          f"{r['spearman_per_item']:.3f} (min {min(per_item):.3f}, max {max(per_item):.3f})")
    return r
