"""Skeleton benchmark, from one run on the synthetic NTU-format set:

1. read throughput of .skeleton files (the exact parser) and of cleaning + resampling;
2. action classification on the cross-subject test side with few labels (--labels-per-class sequences of
   each action; pretraining sees every training sequence, unlabelled): linear probe and full fine-tuning,
   from the skeleton_pretrain export against a random initialisation, at the same labels and steps.

Usage: python benchmarks/skeleton.py [--labels-per-class 2] [--pretrain-epochs 10] [--finetune-epochs 10]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from scimae.pipelines import skeleton_finetune
from scimae.pipelines import skeleton_pretrain
from scimae.core.config import run_cli
from scimae.core.engine import read_metrics
from scimae.domains.skeleton import synthetic
from scimae.domains.skeleton.io import read_skeleton
from scimae.domains.skeleton.transforms import clean, resample_frames

ROOT = Path(__file__).resolve().parents[1]


def read_throughput() -> None:
    files = sorted(synthetic.write_dataset().glob("*.skeleton"))
    t = time.perf_counter()
    seqs = [read_skeleton(f) for f in files]
    read = time.perf_counter() - t
    t = time.perf_counter()
    for s in seqs:
        resample_frames(clean(s)[0], 32)
    prep = time.perf_counter() - t
    frames = sum(s.n_frames for s in seqs)
    mb = sum(f.stat().st_size for f in files) / 2 ** 20
    print(f".skeleton reads: {len(files) / read:.0f} files/s, {frames / read:.0f} frames/s, {mb / read:.1f} MB/s; "
          f"cleaning + resampling {len(files) / prep:.0f} sequences/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels-per-class", type=int, default=2)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmark_skeleton"))
    args = ap.parse_args()
    read_throughput()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    skeleton_pretrain.main([f"train.out_dir={out}", f"train.run_name=pretrain-{stamp}", f"train.epochs={args.pretrain_epochs}"])
    export = f"--init-from={out / f'pretrain-{stamp}' / 'export'}"
    scores = {}
    for name, extra in (("linear probe, random", ["task.linear_probe=true"]),
                        ("linear probe, pretrained", ["task.linear_probe=true", export]),
                        ("fine-tune, scratch", []), ("fine-tune, pretrained", [export])):
        run = f"{name.replace(', ', '_').replace(' ', '_')}-{stamp}"
        skeleton_finetune.main([f"train.out_dir={out}", f"train.run_name={run}", f"train.epochs={args.finetune_epochs}",
                                f"task.labels_per_class={args.labels_per_class}", "train.epoch_repeats=20", *extra])
        scores[name] = float(read_metrics(out / run, "val")[-1]["accuracy"])
    print(f"action classification, {args.labels_per_class} labelled sequences per action, cross-subject test side, "
          "same labels and steps (accuracy):")
    for name, acc in scores.items():
        print(f"  {name:26s} {acc:.3f}")


if __name__ == "__main__":
    run_cli(main)
