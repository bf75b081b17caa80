"""Brain MRI benchmark: does masked pretraining pay on tumours that only their arrangement tells apart?

From one run on the synthetic BraTS-format cases (two patterns, necrosis inside a shell of solid tumour
or beside it, with the same volumes and intensities):

1. loader throughput against what the pretraining step consumes, and peak memory;
2. one split of the cases, then pretraining on the training cases only (validation cases are never seen);
3. frozen features (mean-pooled) of the pretrained encoder, of the same encoder at random initialisation
   (3 seeds) and the `simple` per-modality intensity percentiles, probed by k-NN and logistic regression
   at 2/5/10/all labels per class over 20 label draws;
4. the pretrained encoder with T1ce missing: its probe score against the full input.

Writes evaluation.csv and evaluation.png into --out. Usage:
  python benchmarks/brain_mri.py [--out DIR] [--cases 560] [--pretrain-epochs 6] [--quick]
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from core_step import time_steps
from scimae.core.config import run_cli
from scimae.core.engine import make_optimizer
from scimae.core.evaluate import (encoder_features, extract_features, format_table, logistic_predict, probe_rows,
                                  write_evaluation)
from scimae.domains.brain_mri import synthetic
from scimae.domains.brain_mri.data import BrainDataConfig, class_targets, collate, make_dataset, restrict, split_cases
from scimae.domains.brain_mri.io import discover_cases
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae, load_brain_mae
from scimae.domains.brain_mri.transforms import summary_statistics
from scimae.pipelines import brats_pretrain

MODEL = {"patch": 16, "dim": 128, "depth": 4, "heads": 4, "decoder_dim": 96, "decoder_depth": 1, "decoder_heads": 4}
GRID = {"roi": [64, 64, 64], "spacing": [2.0, 2.0, 2.0]}


def batches(dataset, size: int = 8, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=size, shuffle=shuffle, collate_fn=collate)


def loader_vs_step(dataset, mae) -> None:
    t, n = time.perf_counter(), 0
    for batch in batches(dataset, shuffle=True):
        n += len(batch["image"])
    load_rate = n / (time.perf_counter() - t)
    g = torch.Generator().manual_seed(0)
    step_rate = len(batch["image"]) / time_steps(mae, lambda m: m(batch, g)["loss"], make_optimizer(mae.parameters(), 1e-3), 3)
    print(f"loader: {load_rate:.1f} volumes/s (in-memory cache, no workers); training step consumes {step_rate:.1f} "
          f"volumes/s -> loader/step = {load_rate / step_rate:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/benchmark_brain_mri")
    ap.add_argument("--cases", type=int, default=560, help="synthetic cases")
    ap.add_argument("--val-fraction", type=float, default=0.375, help="share of the cases held out for validation")
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a minute-long smoke run (tests)")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.pretrain_epochs, args.draws, args.seeds = 24, 1, 2, 2
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    out = Path(args.out)
    t = time.perf_counter()
    root = synthetic.write_dataset(None, args.cases)
    cases = discover_cases(root)
    print(f"{len(cases)} synthetic cases ready in {time.perf_counter() - t:.0f} s")
    train_cases, val_cases = split_cases(cases, args.val_fraction, 0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    train_dir = out / f"train_cases-{stamp}"  # the split, made once
    train_dir.mkdir(parents=True)
    for case in train_cases:
        (train_dir / case.case_id).mkdir()
        for f in (root / case.case_id).iterdir():
            (train_dir / case.case_id / f.name).symlink_to(f.resolve())
    t = time.perf_counter()
    brats_pretrain.main(["--data", str(train_dir), "data.val_fraction=0.1",
                         *[f"data.{k}={v}" for k, v in GRID.items()], *[f"model.{k}={v}" for k, v in MODEL.items()],
                         f"train.out_dir={out}", f"train.run_name=pretrain-{stamp}", f"train.epochs={args.pretrain_epochs}",
                         "train.batch_size=8", "train.num_workers=0", "train.figure_every=0"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"pretraining: {time.perf_counter() - t:.0f} s, peak resident memory {peak / 2 ** 20:.2f} GiB")
    mae, _ = load_brain_mae(out / f"pretrain-{stamp}" / "export")

    cfg = BrainDataConfig(root=str(root), cache="memory", **GRID)
    _, y_train = class_targets(train_cases, "pattern", synthetic.PATTERNS)
    _, y_val = class_targets(val_cases, "pattern", synthetic.PATTERNS)

    def datasets(modalities: list[str] | None = None) -> list:
        return [make_dataset(restrict(c, modalities) if modalities else c, cfg, False, targets=y)
                for c, y in ((train_cases, y_train), (val_cases, y_val))]

    t = time.perf_counter()
    full = datasets()
    print(f"probe sets preprocessed in {time.perf_counter() - t:.0f} s")
    loader_vs_step(full[0], mae)

    def features(encoder, sets=full) -> tuple:
        return encoder_features(encoder, *(batches(d) for d in sets))

    def random_encoder(seed: int):
        torch.manual_seed(seed)
        return build_brain_mae(BrainModelConfig(**MODEL), GRID["roi"]).encoder

    x_tr, x_va, y_tr, y_va = features(mae.encoder)
    arms = {"pretrained": [(x_tr, x_va)], "random_init": [features(random_encoder(s))[:2] for s in range(args.seeds)],
            "simple": [tuple(extract_features(lambda b: summary_statistics(b["image"]), batches(d))[0] for d in full)]}
    budgets = [2, 5] if args.quick else [2, 5, 10, None]
    rows = probe_rows("brain_mri", arms, y_tr, y_va, budgets, args.draws)
    csv_path, png = write_evaluation(rows, out)
    print(f"\ntumour pattern (ring vs split), {len(val_cases)} validation cases (chance 0.500); pretraining saw "
          f"{len(train_cases)} unlabelled training cases")
    print(format_table(rows))
    with_all = (logistic_predict(x_tr, y_tr, x_va) == y_va).mean()
    s_tr, s_va, _, _ = features(mae.encoder, datasets(["t1", "t2", "flair"]))
    without = (logistic_predict(s_tr, y_tr, s_va) == y_va).mean()
    print(f"pretrained encoder, logistic probe with all labels: 4 modalities {with_all:.3f}, T1ce missing "
          f"{without:.3f} = {without / with_all:.0%} of the full-input score")
    print(f"wrote {csv_path} and {png}")


if __name__ == "__main__":
    run_cli(main)
