"""Brain MRI benchmark, from one run on the synthetic dataset:

1. loader throughput (volumes/s with 2 workers) against what the default pretraining step consumes;
2. peak memory of the default pretraining (target <= 4 GiB);
3. fine-tuning from the pretrained export against training from scratch at the same labels and steps,
   and the fine-tuned score with one modality left out (printed by brats_finetune).

Usage: python benchmarks/brain_mri.py [--pretrain-epochs 20] [--finetune-epochs 15] [--task classification]
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from scimae.pipelines import brats_finetune
from scimae.pipelines import brats_pretrain
from scimae.core.config import load_config, run_cli
from core_step import time_steps
from scimae.core.engine import make_optimizer, read_metrics
from scimae.domains.brain_mri.data import collate, load_splits
from scimae.domains.brain_mri.model import build_brain_mae

ROOT = Path(__file__).resolve().parents[1]


def loader_vs_step(cfg) -> None:
    train, _, _, _ = load_splits(cfg.data)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True, num_workers=2,
                                         collate_fn=collate, persistent_workers=True)
    it = iter(loader)
    next(it)
    n, t = 0, time.perf_counter()
    for _ in range(3):
        for batch in loader:
            n += batch["image"].shape[0]
    load_rate = n / (time.perf_counter() - t)
    mae = build_brain_mae(cfg.model, cfg.data.grid()[0])
    g = torch.Generator().manual_seed(0)
    step_s = time_steps(mae, lambda m: m(batch, g)["loss"], make_optimizer(mae.parameters(), 1e-3), 5)
    step_rate = batch["image"].shape[0] / step_s
    print(f"loader: {load_rate:.1f} volumes/s (2 workers, 4 modalities each); training step consumes "
          f"{step_rate:.1f} volumes/s -> loader/step = {load_rate / step_rate:.2f} (>= 1: the step is never starved)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-epochs", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--task", default="classification", choices=["classification", "segmentation", "survival"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmark_brain_mri"))
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = load_config(brats_pretrain.Config, brats_pretrain.DEFAULT)
    loader_vs_step(cfg)

    pre = [f"train.out_dir={args.out}", f"train.run_name=pretrain-{stamp}", f"train.epochs={args.pretrain_epochs}"]
    t = time.perf_counter()
    brats_pretrain.main(pre)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"default pretraining: {time.perf_counter() - t:.0f} s, peak resident memory {peak / 2 ** 20:.2f} GiB "
          f"(target <= 4 GiB)")

    export = Path(args.out) / f"pretrain-{stamp}" / "export"
    metric = {"classification": "auroc", "segmentation": "dice_mean", "survival": "c_index"}[args.task]
    scores = {}
    for name, extra in (("scratch", []), ("pretrained", [f"--init-from={export}"])):
        run = f"{args.task}-{name}-{stamp}"
        brats_finetune.main([f"train.out_dir={args.out}", f"train.run_name={run}", f"task.kind={args.task}",
                             f"train.epochs={args.finetune_epochs}", *extra])
        scores[name] = float(read_metrics(Path(args.out) / run, "val")[-1][metric])
    print(f"{args.task} {metric} on the validation cases, same labels and steps: "
          f"scratch {scores['scratch']:.3f}, pretrained {scores['pretrained']:.3f}")


if __name__ == "__main__":
    run_cli(main)
