"""3D benchmark, from one run:

1. farthest point sampling, kNN and Chamfer distance: pytorch3d's kernels against the torch fallback on
   the same inputs (the fallback alone when pytorch3d is not installed);
2. shape classification on the synthetic clouds with few labels (--labels-per-class clouds of each class;
   pretraining sees every training cloud, unlabelled): a linear SVM on pooled features and full
   fine-tuning, from the pointcloud_pretrain export against a random initialisation, same labels and steps.

Usage: python benchmarks/scene3d.py [--labels-per-class 5] [--pretrain-epochs 10] [--finetune-epochs 10]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scimae.pipelines import pointcloud_finetune
from scimae.pipelines import pointcloud_pretrain
from scimae.core.config import run_cli
from scimae.core.engine import read_metrics
from scimae.core.losses import chamfer_torch
from scimae.domains.scene3d.model import farthest_point_sample, has_pytorch3d, knn

ROOT = Path(__file__).resolve().parents[1]


def per_call(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def point_ops(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(32, 1024, 3, generator=g).to(device)
    centres = pts[:, :64]
    groups = torch.rand(32 * 64, 32, 3, generator=g).to(device)
    ops = {"FPS (32 x 1024 -> 64)": lambda p3d: farthest_point_sample(pts, 64, p3d),
           "kNN (32 x 64 queries, k=32)": lambda p3d: knn(centres, pts, 32, p3d),
           "Chamfer (2048 groups of 32)": None}
    p3d = has_pytorch3d()
    print(f"point ops on {device} ({'pytorch3d installed' if p3d else 'pytorch3d not installed: fallback only'}):")
    for name, op in ops.items():
        if op is None:
            fallback = per_call(lambda: chamfer_torch(groups, groups.flip(1)))
            if p3d:
                from pytorch3d.loss import chamfer_distance

                fast = per_call(lambda: chamfer_distance(groups, groups.flip(1), batch_reduction=None))
        else:
            fallback = per_call(lambda: op(False))
            fast = per_call(lambda: op(True)) if p3d else None
        line = f"  {name:30s} torch {fallback * 1e3:8.2f} ms"
        print(line + (f"  pytorch3d {fast * 1e3:8.2f} ms  -> fallback / pytorch3d {fallback / fast:.2f}" if p3d else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels-per-class", type=int, default=5)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmark_scene3d"))
    args = ap.parse_args()
    point_ops(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    pointcloud_pretrain.main([f"train.out_dir={out}", f"train.run_name=pretrain-{stamp}", f"train.epochs={args.pretrain_epochs}"])
    rows = {}
    for name, extra in (("scratch", []), ("pretrained", [f"--init-from={out / f'pretrain-{stamp}' / 'export'}"])):
        run = f"{name}-{stamp}"
        pointcloud_finetune.main([f"train.out_dir={out}", f"train.run_name={run}", f"train.epochs={args.finetune_epochs}",
                                  f"task.labels_per_class={args.labels_per_class}", "train.epoch_repeats=16", *extra])
        rows[name] = (json.loads((out / run / "svm_probe.json").read_text())["accuracy"], float(read_metrics(out / run, "val")[-1]["accuracy"]))
    print(f"shape classification, {args.labels_per_class} labelled clouds per class, validation clouds, same labels "
          "and steps (linear SVM, fine-tuned accuracy):")
    for name, (svm, ft) in rows.items():
        print(f"  {name:12s} {svm:.3f}  {ft:.3f}")


if __name__ == "__main__":
    run_cli(main)
