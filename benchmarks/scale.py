"""Pretraining at dataset scale: memory that does not grow with the data, and a loader that outruns the step.

From one run (each pipeline in a child process, as a user runs it; peak memory (PSS) of its process tree, its
DataLoader workers included, sampled every 0.2 s):

1. cardiac: synthetic sets of 500 and of 4,000 30-s WFDB records, ``cardiac_pretrain`` on each for the same
   number of steps (the window cache built on the first run, then read one window at a time): both peaks and
   their ratio; then the loader with 2 workers over the 4,000 records' window cache against the rate the training
   step consumes;
2. brain MRI: 200 synthetic cases, ``brats_pretrain`` for one epoch at the real-data grid (128^3 at 1 mm, the
   pipeline's model) with ``data.cache=disk``: every case preprocessed once into the disk cache, none held in
   memory, against the 4 x 128^3 x 4 bytes x 200 = 6.4 GB that the memory cache would hold.

Usage: python benchmarks/scale.py [--domain cardiac|brain|all] [--out DIR] [--steps 60] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cardiac import MODEL
from common import cores, run_with_peak_memory
from core_step import time_steps
from scimae.core.engine import make_optimizer
from scimae.domains.brain_mri import synthetic as brain_synthetic
from scimae.domains.cardiac import synthetic
from scimae.domains.cardiac.data import CardiacDataConfig, CardiacWindows
from scimae.domains.cardiac.io import find_records
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae


def cardiac(out: Path, steps: int, quick: bool) -> None:
    sizes, steps = ((50, 400), 10) if quick else ((500, 4000), steps)
    peaks = {}
    for n in sizes:
        t = time.perf_counter()
        root = synthetic.write_dataset(None, n, 30.0)
        written = time.perf_counter() - t
        cmd = [sys.executable, "-m", "scimae.pipelines.cardiac_pretrain", "--data", str(root), "data.val_fraction=0.05",
               *[f"model.{k}={v}" for k, v in MODEL.items()], f"train.max_steps={steps}", "train.batch_size=32",
               "train.num_workers=2", "train.figure_every=0", "train.epochs=1", f"train.out_dir={out}",
               f"train.run_name=records-{n}"]
        t = time.perf_counter()
        peaks[n] = run_with_peak_memory(cmd)
        print(f"{n} records (written in {written:.0f} s): pretraining {steps} steps in {time.perf_counter() - t:.0f} s, "
              f"peak memory (PSS) {peaks[n] / 2 ** 30:.2f} GiB of the process tree", flush=True)
    small, large = sizes
    print(f"peak memory, {large} records over {small}: {peaks[large] / peaks[small]:.2f}")

    cfg = CardiacDataConfig(stride_s=5.0)
    train = CardiacWindows(find_records(synthetic.write_dataset(None, large, 30.0)), cfg)
    t, seen = time.perf_counter(), 0
    for i, batch in enumerate(DataLoader(train, batch_size=32, shuffle=True, num_workers=2)):
        seen += len(batch["y"])
        if i == 100:
            break
    load_rate = seen / (time.perf_counter() - t)
    mae = build_cardiac_mae(CardiacModelConfig(**MODEL), cfg.window_length, cfg.patch)
    g = torch.Generator().manual_seed(0)
    step_rate = 32 / time_steps(mae, lambda m: m(batch, g)["loss"], make_optimizer(mae.parameters(), 1e-3), 3)
    print(f"loader, 2 workers, {len(train)} windows read from the cache: {load_rate:.0f} windows/s; the training step "
          f"consumes {step_rate:.0f} windows/s -> loader / step = {load_rate / step_rate:.1f}")


def brain(out: Path, quick: bool) -> None:
    cases, grid = (12, ["64", "64", "64"]) if quick else (200, ["128", "128", "128"])
    t = time.perf_counter()
    root = brain_synthetic.write_dataset(None, cases)
    written = time.perf_counter() - t
    cmd = [sys.executable, "-m", "scimae.pipelines.brats_pretrain", "--data", str(root), "data.cache=disk",
           f"data.cache_dir={out / 'brain_cache'}", f"data.roi=[{','.join(grid)}]", "data.spacing=[1.0,1.0,1.0]",
           "train.epochs=1", "train.epoch_repeats=1", "train.figure_every=0", f"train.out_dir={out}",
           "train.run_name=brain"]
    t = time.perf_counter()
    peak = run_with_peak_memory(cmd)
    cached = sum(f.stat().st_size for f in (out / "brain_cache").rglob("*") if f.is_file())
    print(f"{cases} brain MRI cases (written in {written:.0f} s) at {'x'.join(grid)}, one epoch with data.cache=disk in "
          f"{time.perf_counter() - t:.0f} s: peak memory (PSS) {peak / 2 ** 30:.2f} GiB of the process tree; the disk "
          f"cache holds {cached / 2 ** 30:.2f} GiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=["cardiac", "brain", "all"], default="all")
    ap.add_argument("--out", default="runs/benchmark_scale")
    ap.add_argument("--steps", type=int, default=60, help="cardiac pretraining steps of each run")
    ap.add_argument("--quick", action="store_true", help="50 and 400 records, 10 steps; 12 cases at 64^3 (tests)")
    args = ap.parse_args()
    torch.set_num_threads(cores())
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    if args.domain in ("cardiac", "all"):
        cardiac(out, args.steps, args.quick)
    if args.domain in ("brain", "all"):
        brain(out, args.quick)


if __name__ == "__main__":
    main()
