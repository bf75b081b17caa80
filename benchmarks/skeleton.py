"""Skeleton benchmark: does masked pretraining pay on actions that only structure tells apart?

From one run on the synthetic NTU-format set (8 actions that differ in how the arms move relative to each
other and in the tempo of a squat, with the same per-joint statistics):

1. read throughput of .skeleton files (the exact parser, cleaning, resampling), then from the parse cache;
2. pretraining on the cross-subject training side (the test side is never seen), on the first body of each
   sequence (in two-person sequences both perform the same action; one body halves the tokens);
3. frozen features of the pretrained encoder, of the same encoder at random initialisation (3 seeds) and
   the `simple` per-joint summary statistics, probed by k-NN and logistic regression at 2/5/10/all labels
   per action over 20 label draws;
4. fine-tuning with 5 labels per action from the export and from scratch, 3 seeds each, same labels,
   steps, head and schedule (layer-wise lr decay for the pretrained arm only; each arm's learning rate chosen
   from --lrs by fine-tuning on 4 labels and scoring on the 5th), with McNemar's test.

Writes evaluation.csv and evaluation.png into --out. Usage:
  python benchmarks/skeleton.py [--out DIR] [--pretrain-epochs 20] [--export EXPORT] [--quick]
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import parse, parser, report, run_pipeline
from scimae.core.config import run_cli
from scimae.core.evaluate import (encoder_features, extract_features, finetune_rows, held_back,
                                   predict_classes, probe_rows)
from scimae.domains.skeleton import synthetic
from scimae.domains.skeleton.data import SkeletonDataConfig, SyntheticConfig, Skeletons, load_samples
from scimae.domains.skeleton.model import SkeletonModelConfig, build_skeleton_mae, load_skeleton_mae
from scimae.domains.skeleton.transforms import summary_statistics
from scimae.domains.skeleton.finetune import load_finetuned

MODEL = {"dim": 96, "depth": 4, "heads": 4, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4}


def read_throughput(folder: Path, cfg: SkeletonDataConfig) -> None:
    """Reading the dataset twice into an empty user cache: the first run parses, cleans and resamples every
    .skeleton file, the second reads the parse cache."""
    times, n = [], len(list(folder.glob("*.skeleton")))
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, SCIMAE_CACHE=cache):
        for _ in range(2):
            t = time.perf_counter()
            load_samples(dataclasses.replace(cfg, root=str(folder)))
            times.append(time.perf_counter() - t)
    print(f".skeleton files: first read {n / times[0]:.0f} files/s (parsed, cleaned, resampled), second "
          f"{n / times[1]:.0f} files/s from the parse cache ({times[0] / times[1]:.0f}x)")


def batches(dataset, size: int = 64) -> DataLoader:
    return DataLoader(dataset, batch_size=size)


def main():
    ap = parser(__doc__, "skeleton", pretrain_epochs=20)
    ap.add_argument("--per-action", type=int, default=70, help="synthetic sequences per action (3/8 are test side)")
    ap.add_argument("--export", help="evaluate this skeleton_pretrain export (pretrained on the same synthetic "
                                     "training side) instead of pretraining one")
    args = parse(ap, per_action=12)
    out = Path(args.out)
    data_cfg = SkeletonDataConfig(synthetic=SyntheticConfig(per_action=args.per_action), bodies=1)
    folder = synthetic.write_dataset(None, args.per_action, data_cfg.synthetic.seed)
    read_throughput(folder, data_cfg)
    model_args = [f"model.{k}={v}" for k, v in MODEL.items()]
    data_args = [f"data.synthetic.per_action={args.per_action}", "data.bodies=1"]
    t = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.export:
        export = Path(args.export)
    else:
        export = run_pipeline("skeleton_pretrain", [*data_args, *model_args, f"train.epochs={args.pretrain_epochs}",
                                                    "train.figure_every=0"], out, f"pretrain-{stamp}")
        print(f"pretraining: {time.perf_counter() - t:.0f} s")

    train, val = load_samples(data_cfg)
    actions = sorted({s["action"] for s in train})
    train_set, val_set = Skeletons(train, data_cfg, False, actions), Skeletons(val, data_cfg, False, actions)

    def features(encoder) -> tuple:
        return encoder_features(encoder, batches(train_set), batches(val_set))

    def random_encoder(seed: int):
        torch.manual_seed(seed)
        return build_skeleton_mae(SkeletonModelConfig(**MODEL), data_cfg.frames, data_cfg.bodies, data_cfg.joints).encoder

    x_tr, x_va, y_tr, y_va = features(load_skeleton_mae(export)[0].encoder)
    arms = {"pretrained": [(x_tr, x_va)], "random_init": [features(random_encoder(s))[:2] for s in range(args.seeds)]}
    simple = [extract_features(lambda b: summary_statistics(b["joints"], b["present"]), batches(d))[0]
              for d in (train_set, val_set)]
    arms["simple"] = [tuple(simple)]
    budgets = [2, 5] if args.quick else [2, 5, 10, None]
    rows = probe_rows("skeleton", arms, y_tr, y_va, budgets, args.draws)

    labels = 2 if args.quick else 5
    held = [train[i] for i in held_back([s["action"] for s in train], labels)]  # score the learning rates
    check = Skeletons(held, data_cfg, False, actions), np.array([actions.index(s["action"]) for s in held])

    def finetune(arm: str, seed: int, lr: float, per_class: int = labels, predict=val_set):
        extra = [f"--init-from={export}", "train.layer_decay=0.75"] if arm == "pretrained" else ["train.layer_decay=1.0"]
        tuned = run_pipeline("skeleton_finetune", [*data_args, *model_args, *extra, f"train.seed={seed}", f"train.lr={lr}",
                                                   "train.val_every=0",
                                                   f"train.epochs={args.finetune_epochs}", f"task.labels_per_class={per_class}",
                                                   "train.epoch_repeats=16", "train.warmup_epochs=0.5", "train.batch_size=16"],
                             out, f"finetune-{arm}-{seed}-{lr:g}-{per_class}-{stamp}", args.threads)
        return predict_classes(load_finetuned(tuned)[0], batches(predict))

    tuned, p_value, chosen = finetune_rows("skeleton", finetune, y_va, labels, args.seeds, args.lrs, check,
                                           args.parallel)
    heading = (f"\naction classification, cross-subject test side ({len(val)} sequences, {len(actions)} actions, "
               f"chance {1 / len(actions):.3f}); pretraining saw {len(train)} unlabelled training sequences")
    report(rows + tuned, out, heading, p_value, args.seeds, chosen)


if __name__ == "__main__":
    run_cli(main)
