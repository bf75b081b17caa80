"""Cardiac benchmark, from one run on the synthetic records:

1. ``embed`` throughput on this machine (10-s windows per second);
2. loader throughput against what the default pretraining step consumes;
3. fine-tuning and linear probing from the pretrained export against a randomly initialised encoder at
   the same labels and steps, with the per-channel-configuration table (printed by cardiac_finetune).

Usage: python benchmarks/cardiac.py [--pretrain-epochs 10] [--finetune-epochs 8] [--task diagnosis]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from scimae.pipelines import cardiac_finetune
from scimae.pipelines import cardiac_pretrain
from scimae.core.config import load_config, run_cli
from core_step import time_steps
from scimae.core.engine import make_optimizer, read_metrics
from scimae.domains.cardiac.api import CardiacFoundationModel
from scimae.domains.cardiac.data import find_records, load_splits, resolve_root
from scimae.domains.cardiac.model import build_cardiac_mae

ROOT = Path(__file__).resolve().parents[1]


def loader_vs_step(cfg) -> None:
    train, _ = load_splits(cfg.data)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True)
    n, t = 0, time.perf_counter()
    for batch in loader:
        n += len(batch["y"])
    load_rate = n / (time.perf_counter() - t)
    mae = build_cardiac_mae(cfg.model, cfg.data.window_length, cfg.data.patch)
    g = torch.Generator().manual_seed(0)
    step_s = time_steps(mae, lambda m: m(batch, g)["loss"], make_optimizer(mae.parameters(), 1e-3), 5)
    step_rate = len(batch["y"]) / step_s
    print(f"loader: {load_rate:.0f} windows/s (preprocessed once, in memory); training step consumes "
          f"{step_rate:.0f} windows/s -> loader/step = {load_rate / step_rate:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--task", default="diagnosis", choices=["diagnosis", "regression"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmark_cardiac"))
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = load_config(cardiac_pretrain.Config, cardiac_pretrain.DEFAULT)
    loader_vs_step(cfg)
    t = time.perf_counter()
    cardiac_pretrain.main([f"train.out_dir={args.out}", f"train.run_name=pretrain-{stamp}",
                           f"train.epochs={args.pretrain_epochs}"])
    print(f"default pretraining: {time.perf_counter() - t:.0f} s")
    export = Path(args.out) / f"pretrain-{stamp}" / "export"

    model = CardiacFoundationModel.from_pretrained(export, device="cpu")
    records = find_records(resolve_root(cfg.data))[:16]
    model.embed(records[0])
    t, n = time.perf_counter(), 0
    for r in records:
        n += len(model.embed(r))
    print(f"embed: {n / (time.perf_counter() - t):.1f} windows of 10 s per second on CPU "
          f"({torch.get_num_threads()} threads, reading and preprocessing included)")

    metric = {"diagnosis": "macro_auroc", "regression": "mae"}[args.task]
    probe = ["task.head=linear", "task.freeze_encoder=true", "train.lr=3e-3"]
    for mode, extra_mode in (("fine-tune", []), ("linear probe", probe)):
        scores = {}
        for name, extra in (("scratch", []), ("pretrained", [f"--init-from={export}"])):
            run = f"{args.task}-{mode.replace(' ', '')}-{name}-{stamp}"
            cardiac_finetune.main([f"train.out_dir={args.out}", f"train.run_name={run}", f"task.kind={args.task}",
                                   f"train.epochs={args.finetune_epochs}", *extra_mode, *extra])
            scores[name] = float(read_metrics(Path(args.out) / run, "val")[-1][metric])
        print(f"{args.task} {mode}: {metric} on validation records, same labels and steps: "
              f"scratch {scores['scratch']:.3f}, pretrained {scores['pretrained']:.3f}")


if __name__ == "__main__":
    run_cli(main)
