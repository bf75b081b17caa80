"""Brain MRI benchmark: does masked pretraining pay on tumours that only their layout tells apart?

From one run on the synthetic BraTS-format cases, on one of two labels with the same volumes and
intensities in both classes: ``side`` (the lesion in the left or right hemisphere, the default) or
``pattern`` (necrosis inside a shell of solid tumour or beside it):

1. loader throughput against what the pretraining step consumes, and peak memory;
2. one split of the cases, then pretraining on the training cases only (validation cases are never seen);
3. frozen features (mean-pooled) of the pretrained encoder, of the same encoder at random initialisation
   (3 seeds) and the `simple` per-modality intensity percentiles, probed by k-NN and logistic regression
   at 2/5/10/all labels per class over 20 label draws;
4. fine-tuning with 5 labelled cases per class from the export and from scratch, 3 seeds each, same
   labels, steps, head and schedule (layer-wise lr decay for the pretrained arm only; each arm's learning rate
   chosen from --lrs by fine-tuning on 4 labels and scoring on the 5th; no left-right flips), with McNemar's test;
5. the pretrained encoder with T1ce missing: its probe score against the full input.

Writes evaluation.csv and evaluation.png into --out. With ``--imputation EXPORT`` it measures instead how a
brats_pretrain export synthesises T1ce and FLAIR on the cases it held out (``--data``, default the pipeline's
synthetic set): PSNR of the synthesis and of the training cases' mean image, and the Spearman correlation between
the uncertainty of K syntheses (``--uncertainty K``) and the absolute error. Usage:
  python benchmarks/brain_mri.py [--out DIR] [--label side|pattern] [--cases 560] [--pretrain-epochs 4] [--norm-pix]
                                 [--quick]
  python benchmarks/brain_mri.py --imputation EXPORT [--data DIR] [--uncertainty 8]
"""
from __future__ import annotations

import csv
import resource
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import NormalizeIntensity
from torch.utils.data import DataLoader

from common import link_files, parse, parser, report, run_pipeline, synthesis_row, synthesis_summary
from core_step import time_steps
from scimae.core.config import run_cli
from scimae.core.engine import make_optimizer
from scimae.core.evaluate import (encoder_features, extract_features, finetune_rows, held_back,
                                  logistic_predict, predict_classes, probe_rows)
from scimae.domains.brain_mri import synthetic
from scimae.core.data import seeded_split
from scimae.domains.brain_mri.data import BrainDataConfig, class_targets, collate, make_dataset, restrict
from scimae.domains.brain_mri.inference import reconstruct_case
from scimae.domains.brain_mri.io import discover_cases, read_volume
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae, load_brain_mae
from scimae.domains.brain_mri.transforms import summary_statistics
from scimae.domains.brain_mri.finetune import load_finetuned

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


def imputation(export: str, root: str | None, draws: int) -> dict:
    """T1ce and FLAIR of each case the export held out that has them, synthesised from its others as brats_reconstruct does
    (on the case's grid, z-scored): PSNR against the true volume over the brain, beside the PSNR of the training
    cases' mean image of that modality, and Spearman's rank correlation of the uncertainty with the absolute error,
    over the brain's voxels of every case and per case. Returns them per modality."""
    model, config = load_brain_mae(export)
    model.eval()
    cases = discover_cases(root or BrainDataConfig().synthetic.write())
    held_out = set(config["held_out"])
    held = [c for c in cases if c.case_id in held_out]
    train = [c for c in cases if c.case_id not in held_out]
    zscore = NormalizeIntensity(nonzero=True)

    def truth(case, modality: str) -> np.ndarray:  # [X, Y, Z] z-scored over the brain, 0 outside
        return np.asarray(zscore(read_volume(case.paths[modality])[0]))

    results = {}
    for modality in ("t1ce", "flair"):
        mean_image = np.mean([truth(c, modality) for c in train if modality in c.paths], axis=0)  # [X, Y, Z]
        scored = [c for c in held if modality in c.paths and len(c.paths) > 1]
        if not scored:
            print(f"{modality}: no held-out case has it beside another modality")
            continue
        rows = []
        for case in scored:
            (synthesis, spread), _, _ = reconstruct_case(model, config, case, modality, uncertainty=draws)
            true = truth(case, modality)
            brain = (true != 0) & (synthesis != 0)
            rows.append(synthesis_row(true[brain], synthesis[brain], mean_image[brain], spread[brain]))
        results[modality] = synthesis_summary(f"{modality} from the others (baseline: the mean image), cases", rows,
                                              draws)
    return results


def main():
    ap = parser(__doc__, "brain_mri", pretrain_epochs=4, finetune_epochs=None)
    ap.add_argument("--cases", type=int, default=560, help="synthetic cases")
    ap.add_argument("--val-fraction", type=float, default=0.375, help="share of the cases held out for validation")
    ap.add_argument("--label", default="side", choices=["side", "pattern"], help="the label column probed")
    ap.add_argument("--norm-pix", action="store_true", help="pretrain on MAE's per-patch normalised target")
    ap.add_argument("--finetune-repeats", type=int, default=24, help="passes over the labelled cases (one epoch)")
    ap.add_argument("--imputation", metavar="EXPORT", help="measure a brats_pretrain export's synthesis instead")
    ap.add_argument("--data", help="with --imputation: the cases (default: the pipeline's synthetic set)")
    ap.add_argument("--uncertainty", type=int, default=8, metavar="K", help="with --imputation: syntheses per case")
    args = parse(ap, cases=24, finetune_repeats=2)
    if args.imputation:
        imputation(args.imputation, args.data, args.uncertainty)
        return
    out = Path(args.out)
    t = time.perf_counter()
    root = synthetic.write_dataset(None, args.cases)
    cases = discover_cases(root)
    print(f"{len(cases)} synthetic cases ready in {time.perf_counter() - t:.0f} s")
    train_cases, val_cases = seeded_split(cases, args.val_fraction, 0)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def folder(name: str, cases: list) -> Path:  # the split, made once, as folders of links and their labels
        for case in cases:
            link_files(out / name / case.case_id, (root / case.case_id).iterdir())
        ids = {case.case_id for case in cases}
        with (root / "labels.csv").open(newline="") as f:
            table = list(csv.DictReader(f))
        with (out / name / "labels.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(row for row in table if row["case_id"] in ids)
        return out / name

    train_dir, val_dir = folder(f"train_cases-{stamp}", train_cases), folder(f"val_cases-{stamp}", val_cases)
    t = time.perf_counter()
    export = run_pipeline("brats_pretrain", ["--data", str(train_dir), "data.val_fraction=0.1",
                                             *[f"data.{k}={v}" for k, v in GRID.items()],
                                             *[f"model.{k}={v}" for k, v in MODEL.items()],
                                             f"train.epochs={args.pretrain_epochs}", f"model.norm_pix={args.norm_pix}",
                                             "train.batch_size=8", "train.num_workers=0", "train.figure_every=0"],
                          out, f"pretrain-{stamp}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"pretraining: {time.perf_counter() - t:.0f} s, peak resident memory {peak / 2 ** 20:.2f} GiB")
    mae, _ = load_brain_mae(export)

    cfg = BrainDataConfig(root=str(root), cache="memory", **GRID)
    classes = {"side": synthetic.SIDES, "pattern": synthetic.PATTERNS}[args.label]
    _, y_train = class_targets(train_cases, args.label, classes)
    _, y_val = class_targets(val_cases, args.label, classes)

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
    labels = 2 if args.quick else 5
    held = held_back(y_tr.tolist(), labels)  # the order brats_finetune counts labels in
    check = make_dataset([train_cases[i] for i in held], cfg, False, targets=[y_train[i] for i in held]), y_tr[held]
    held_dir = folder(f"held_back-{stamp}", [train_cases[i] for i in held])

    def finetune(arm: str, seed: int, lr: float, per_class: int = labels, predict=full[1]):
        extra = [f"--init-from={export}", "train.layer_decay=0.75"] if arm == "pretrained" else ["train.layer_decay=1.0"]
        watch = val_dir if predict is full[1] else held_dir  # choosing a learning rate never looks at validation
        tuned = run_pipeline("brats_finetune", ["--data", str(train_dir), f"data.val_root={watch}", "data.flips=[1,2]",
                                                "data.cache=disk", f"data.cache_dir={out / f'cache-{stamp}'}",
                                                *[f"data.{k}={v}" for k, v in GRID.items()],
                                                *[f"model.{k}={v}" for k, v in MODEL.items() if k in ("patch", "dim", "depth", "heads")],
                                                *extra, f"task.label={args.label}", f"task.labels_per_class={per_class}",
                                                "task.leave_one_out=false", f"train.seed={seed}", f"train.lr={lr}",
                                                "train.val_every=0",
                                                "train.epochs=1", f"train.epoch_repeats={args.finetune_repeats}",
                                                "train.warmup_epochs=0.1", f"train.batch_size={min(8, len(classes) * per_class)}",
                                                "train.num_workers=0"], out,
                             f"finetune-{arm}-{seed}-{lr:g}-{per_class}-{stamp}", args.threads)
        return predict_classes(load_finetuned(tuned)[0], batches(predict))

    tuned, p_value, chosen = finetune_rows("brain_mri", finetune, y_va, labels, args.seeds, args.lrs, check,
                                           args.parallel)
    heading = (f"\ntumour {args.label} ({' vs '.join(classes)}), {len(val_cases)} validation cases (chance 0.500); "
               f"pretraining saw {len(train_cases)} unlabelled training cases")
    report(rows + tuned, out, heading, p_value, args.seeds, chosen)
    with_all = (logistic_predict(x_tr, y_tr, x_va) == y_va).mean()
    s_tr, s_va, _, _ = features(mae.encoder, datasets(["t1", "t2", "flair"]))
    without = (logistic_predict(s_tr, y_tr, s_va) == y_va).mean()
    print(f"pretrained encoder, logistic probe with all labels: 4 modalities {with_all:.3f}, T1ce missing "
          f"{without:.3f} = {without / with_all:.0%} of the full-input score")


if __name__ == "__main__":
    run_cli(main)
