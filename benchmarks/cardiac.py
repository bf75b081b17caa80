"""Cardiac benchmark: does masked pretraining pay on ECGs that only waveform structure tells apart?

From one run on the synthetic WFDB records (4 conduction patterns: the order in which the precordial
leads see each beat x the QRS mirrored in time, independent of the rhythm, with the same per-lead
distributions):

1. ``embed`` throughput on this machine (10-s 12-lead records per second, one at a time and as a list;
   10-s windows per second on a 30-min record), loader against training-step rate, and the encoder in torch
   against its ONNX export in onnxruntime;
2. one split of the records, then pretraining on the training records only (validation records are never
   seen);
3. frozen features (mean-pooled) of the pretrained encoder, of the same encoder at random initialisation
   (3 seeds) and the `simple` per-lead percentiles, slopes and heart rate, probed by k-NN and logistic
   regression at 2/5/10/all labels per class over 20 label draws, on the 12-lead records' 10-s windows;
4. fine-tuning with 5 labelled windows per class from the export and from scratch, 3 seeds each, same
   labels, steps, head and schedule (layer-wise lr decay for the pretrained arm only; each arm's learning rate
   chosen from --lrs by fine-tuning on 4 labels and scoring on the 5th), with McNemar's test;
5. the pretrained encoder with leads missing (precordial leads only; limb leads only, which lose the V1-V6
   order; lead I only): its probe score against the full input;
6. per-lead reconstruction error on the validation windows, and of III, aVR, aVL and aVF from I and II alone.

Writes evaluation.csv and evaluation.png into --out. With ``--imputation EXPORT`` it measures instead how a
cardiac_pretrain export synthesises channels of the records it held out that have all 13 (V1-V6 from the limb
leads and PPG, III from I and II, II from PPG) with ``CardiacFoundationModel.reconstruct``: PSNR of the synthesis
and of the channel's mean (0 in standardised units), and the Spearman correlation between the uncertainty of K
syntheses (``--uncertainty K``) and the absolute error. Usage:
  python benchmarks/cardiac.py [--out DIR] [--records 720] [--pretrain-epochs 4] [--finetune-epochs 3] [--group-heads true|false]
      [--mask-ratio R] [--target pixels|frequency|features [--teacher EXPORT]] [--quick]
  python benchmarks/cardiac.py --imputation EXPORT [--uncertainty 8]
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from common import link_files, onnx_throughput, parse, parser, report, run_pipeline, synthesis_row, synthesis_summary
from core_step import time_steps
from scimae.core.config import run_cli
from scimae.core.engine import make_optimizer
from scimae.core.evaluate import (encoder_features, extract_features, finetune_rows, held_back,
                                  logistic_predict, predict_classes, probe_rows)
from scimae.domains.cardiac import synthetic
from scimae.domains.cardiac.api import CardiacFoundationModel
from scimae.core.data import seeded_split
from scimae.domains.cardiac.data import CardiacDataConfig, CardiacWindows, records_windows
from scimae.domains.cardiac.io import CHANNELS, LEADS, find_records, read_record
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae, load_cardiac_mae
from scimae.domains.cardiac.transforms import summary_statistics

MODEL = {"dim": 96, "depth": 3, "heads": 4, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4}


def batches(dataset, size: int = 64) -> DataLoader:
    return DataLoader(dataset, batch_size=size)


def clinical_records(folder: Path, n: int) -> list[Path]:
    """``n`` 10-s 12-lead 500 Hz records, one WFDB file each (as PTB-XL ships them), and one 30-min two-lead record at
    360 Hz (as MIT-BIH's): the paths, the long record last."""
    import numpy as np
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sig, _ = synthetic.make_record(rng, "sinus", False, 10.0, 500.0)
        wfdb.wrsamp(f"ecg{i:03d}", fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=sig[:, :12], fmt=["16"] * 12,
                    write_dir=str(folder))
    sig, _ = synthetic.make_record(rng, "sinus", True, 1800.0, 360.0)
    wfdb.wrsamp("long", fs=360, units=["mV"] * 2, sig_name=["MLII", "V5"], p_signal=sig[:, [1, 10]], fmt=["16"] * 2,
                write_dir=str(folder))
    return [folder / f"ecg{i:03d}" for i in range(n)] + [folder / "long"]


def throughput(folder: Path, export: Path, train: CardiacWindows, batch_size: int, n: int) -> None:
    """embed's rate on a list of short records (one at a time and as a list) and on one long record, reading and
    preprocessing included; the loader against the training step."""
    model = CardiacFoundationModel.from_pretrained(export, device="cpu")
    *short, long = clinical_records(folder, n)
    model.embed(short[:8])
    t = time.perf_counter()
    for r in short:
        model.embed(r)
    one = len(short) / (time.perf_counter() - t)
    t = time.perf_counter()
    model.embed(short)
    many = len(short) / (time.perf_counter() - t)
    t = time.perf_counter()
    windows = len(model.embed(long))
    print(f"embed on CPU ({torch.get_num_threads()} threads, reading and preprocessing included): {len(short)} 10-s 12-lead "
          f"500 Hz records, one file each: {one:.0f} records/s one at a time, {many:.0f} records/s as a list; one 30-min "
          f"two-lead record: {windows / (time.perf_counter() - t):.0f} windows of 10 s per second")
    t, n = time.perf_counter(), 0
    for batch in DataLoader(train, batch_size=batch_size, shuffle=True):
        n += len(batch["y"])
    load_rate = n / (time.perf_counter() - t)
    mae = model.mae
    g = torch.Generator().manual_seed(0)
    step_rate = len(batch["y"]) / time_steps(mae, lambda m: m(batch, g)["loss"], make_optimizer(mae.parameters(), 1e-3), 3)
    print(f"loader: {load_rate:.0f} windows/s (read from the window cache, no workers); training step consumes "
          f"{step_rate:.0f} windows/s -> loader/step = {load_rate / step_rate:.1f}")
    onnx_throughput(mae.encoder, next(iter(DataLoader(train, batch_size=64))), folder)


@torch.no_grad()
def lead_reconstruction(mae, dataset) -> None:
    """Per-lead loss on validation windows (MSE of the z-scored leads: 1.0 = predicting each lead's window mean;
    norm-pix if the model was trained with it): under the model's masking (a model of masked patches), and for the
    limb leads that are fixed sums of I and II (III, aVR, aVL, aVF) from I and II alone."""
    mae.eval()
    sums, weights, derived = {}, {}, {}
    g = torch.Generator().manual_seed(0)
    for batch in batches(dataset, 32):
        out = mae(batch, g) if mae.frequency is None else {}  # MFM hides no patch
        for name in mae.group_names:
            n = float(out.get(f"slots/{name}", 0))
            sums[name] = sums.get(name, 0.0) + float(out.get(f"loss/{name}", 0)) * n
            weights[name] = weights.get(name, 0.0) + n
        two = dict(batch, present=batch["present"].clone())
        two["present"][:, 2:] = False  # I and II alone
        filled = mae.fill(two, ["III", "aVR", "aVL", "aVF"])
        for lead in ("III", "aVR", "aVL", "aVF"):
            derived[lead] = derived.get(lead, 0.0) + float(filled[f"loss/{lead}"]) * len(batch["y"])
    if any(weights.values()):
        print("reconstruction, hidden patches (loss): "
              + " ".join(f"{k} {sums[k] / weights[k]:.3f}" for k in sums if weights[k]))
    print("reconstruction from I and II alone: " + " ".join(f"{k} {v / len(dataset):.3f}" for k, v in derived.items()))


SYNTHESES = {"V1-V6 from the limb leads and PPG": (LEADS[:6] + ["PPG"], LEADS[6:]),
             "III from I and II": (["I", "II"], ["III"]), "II from PPG": (["PPG"], ["II"])}


def imputation(export: str, draws: int, n: int = 30) -> dict:
    """Each of :data:`SYNTHESES` on the first ``n`` records the export held out that have every channel, from their
    source channels alone: PSNR against the record's own channels (standardised per window as the model sees them;
    the peak is their range) beside the PSNR of their mean, 0, and Spearman's rank correlation of the uncertainty of
    ``draws`` syntheses with the absolute error, over every sample and per record. Returns them per synthesis."""
    model = CardiacFoundationModel.from_pretrained(export)
    sigs = [s for s in map(read_record, model.config["held_out"]) if set(CHANNELS) <= set(s.channels)][:n]
    results = {}
    if not sigs:
        print(f"none of the {len(model.config['held_out'])} records the export held out has every channel")
        return results
    truths = [w["image"][:, :, 0] for w in records_windows(sigs, model.data_cfg)]  # [W, 13, L] per record, once
    for name, (sources, targets) in SYNTHESES.items():
        rows = []
        for sig, window in zip(sigs, truths):
            keep = [sig.channels.index(c) for c in sources + targets]
            data, names = sig.data[keep], [sig.channels[i] for i in keep]
            out = model.reconstruct(data, targets, fs=sig.fs, names=names, uncertainty=draws)
            true = window[:, [CHANNELS.index(c) for c in targets]].swapaxes(0, 1)  # [T, W, L] (per window and lead)
            synthesis, spread = (np.stack([out[f"{c}{key}"] for c in targets]) for key in ("", "/uncertainty"))
            rows.append(synthesis_row(true, synthesis, np.zeros_like(true), spread))
        results[name] = synthesis_summary(f"{name} (baseline: the mean, 0), records", rows, draws)
    return results


def main():
    ap = parser(__doc__, "cardiac", pretrain_epochs=4)
    ap.add_argument("--records", type=int, default=720, help="synthetic 30-s records (a quarter are validation)")
    ap.add_argument("--mask", default="random", help="pretraining mask strategy (shared: the same places in every lead)")
    ap.add_argument("--group-heads", choices=["true", "false"], help="one prediction head per lead (default: the pipeline's)")
    ap.add_argument("--mask-ratio", type=float, help="share of patches hidden in pretraining (default: the pipeline's)")
    ap.add_argument("--target", choices=["pixels", "frequency", "features"], default="pixels",
                    help="pretraining objective: the hidden patches' values, masked frequency modelling (MFM), or a "
                         "teacher's features of the hidden patches (--teacher)")
    ap.add_argument("--teacher", help="with --target features: the teacher, a pretraining export of this domain")
    ap.add_argument("--imputation", metavar="EXPORT", help="measure a cardiac_pretrain export's synthesis instead")
    ap.add_argument("--uncertainty", type=int, default=8, metavar="K", help="with --imputation: syntheses per record")
    args = parse(ap, records=64)
    if args.imputation:
        imputation(args.imputation, args.uncertainty)
        return
    out = Path(args.out)
    records = find_records(synthetic.write_dataset(None, args.records, 30.0))
    train_records, val_records = seeded_split(records, 0.25, 0)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def folder(name: str, paths: list[Path]) -> Path:  # the split, made once, as folders of links
        return link_files(out / name, [f for rec in paths for f in rec.parent.glob(rec.name + ".*")])

    train_dir = folder(f"train_records-{stamp}", train_records)
    t = time.perf_counter()
    export = run_pipeline("cardiac_pretrain", ["--data", str(train_dir), "data.val_fraction=0.1",
                                               *[f"model.{k}={v}" for k, v in MODEL.items()],
                                               f"train.epochs={args.pretrain_epochs}", f"model.mask.strategy={args.mask}",
                                               f"model.target={args.target}",
                                               *([f"model.teacher={args.teacher}"] if args.teacher else []),
                                               "train.batch_size=32",
                                               *([f"model.mask.ratio={args.mask_ratio}"] if args.mask_ratio else []),
                                               *([f"model.group_heads={args.group_heads}"] if args.group_heads else []),
                                               "train.figure_every=0"], out, f"pretrain-{stamp}")
    print(f"pretraining: {time.perf_counter() - t:.0f} s")
    mae, _ = load_cardiac_mae(export)

    cfg = CardiacDataConfig(stride_s=10.0)
    classes = sorted(synthetic.MORPHOLOGIES)  # the order cardiac_finetune gives them

    def twelve_lead(paths: list[Path]) -> list[Path]:
        return [p for p in paths if set(LEADS) <= set(read_record(p).channels)]

    sides = [twelve_lead(train_records), twelve_lead(val_records)]

    def datasets(channels: list[str] | None = None) -> list[CardiacWindows]:
        return [CardiacWindows(paths, cfg, channels, "morphology", classes) for paths in sides]

    full = datasets()
    throughput(out / f"clinical-{stamp}", export, full[0], 32, 16 if args.quick else 200)

    def features(encoder, sets=full) -> tuple:
        return encoder_features(encoder, *(batches(d) for d in sets))

    def random_encoder(seed: int):
        torch.manual_seed(seed)
        return build_cardiac_mae(CardiacModelConfig(**MODEL), cfg.window_length, cfg.patch).encoder

    x_tr, x_va, y_tr, y_va = features(mae.encoder)
    arms = {"pretrained": [(x_tr, x_va)], "random_init": [features(random_encoder(s))[:2] for s in range(args.seeds)],
            "simple": [tuple(extract_features(lambda b: summary_statistics(b["image"], b["hr"]), batches(d))[0]
                             for d in full)]}
    budgets = [2, 5] if args.quick else [2, 5, 10, None]
    rows = probe_rows("cardiac", arms, y_tr, y_va, budgets, args.draws)
    labels = 2 if args.quick else 5
    tune_dirs = [folder(f"{side}_12lead-{stamp}", paths) for side, paths in zip(("train", "val"), sides)]
    held = held_back(full[0].y.tolist(), labels)  # the order cardiac_finetune counts labels in
    check = Subset(full[0], held), y_tr[held]  # scores the learning rates

    def finetune(arm: str, seed: int, lr: float, per_class: int = labels, predict=full[1]):
        extra = [f"--init-from={export}", "train.layer_decay=0.75"] if arm == "pretrained" else ["train.layer_decay=1.0"]
        tuned = run_pipeline("cardiac_finetune", ["--data", str(tune_dirs[0]), f"data.val_root={tune_dirs[1]}",
                                                  "data.stride_s=10",
                                                  *[f"model.{k}={v}" for k, v in MODEL.items() if k in ("dim", "depth", "heads")],
                                                  *extra, "task.kind=classification", f"task.labels_per_class={per_class}",
                                                  "task.by_channels=false", f"train.seed={seed}", f"train.lr={lr}",
                                                  "train.val_every=0",
                                                  f"train.epochs={args.finetune_epochs}", "train.epoch_repeats=16",
                                                  "train.warmup_epochs=0.5"], out,
                             f"finetune-{arm}-{seed}-{lr:g}-{per_class}-{stamp}", args.threads)
        return predict_classes(CardiacFoundationModel.from_pretrained(tuned, device="cpu"), batches(predict))

    tuned, p_value, chosen = finetune_rows("cardiac", finetune, y_va, labels, args.seeds, args.lrs, check,
                                           args.parallel)
    heading = (f"\nconduction pattern, {len(y_va)} validation windows of {len(sides[1])} 12-lead records, "
               f"{len(classes)} classes (chance {1 / len(classes):.3f}); pretraining saw {len(train_records)} "
               "unlabelled training records")
    report(rows + tuned, out, heading, p_value, args.seeds, chosen)
    with_all = (logistic_predict(x_tr, y_tr, x_va) == y_va).mean()
    print(f"pretrained encoder, logistic probe with all labels: 12 leads {with_all:.3f}")
    for name, channels in (("precordial leads only", LEADS[6:]), ("limb leads only", LEADS[:6]), ("lead I only", ["I"])):
        s_tr, s_va, _, _ = features(mae.encoder, datasets(channels))
        score = (logistic_predict(s_tr, y_tr, s_va) == y_va).mean()
        print(f"  {name}: {score:.3f} = {score / with_all:.0%} of the 12-lead score")
    lead_reconstruction(mae, full[1])


if __name__ == "__main__":
    run_cli(main)
