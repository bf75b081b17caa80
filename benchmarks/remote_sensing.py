"""Remote-sensing benchmark: does masked pretraining pay on scenes that only spatial layout tells apart?

From one run on the synthetic tiles (4 layouts of the same land covers in the same shares):

1. window-read throughput of the scene reader against a plain rasterio read of the same windows, and the
   encoder in torch against its ONNX export in onnxruntime;
2. one split of the tiles, then pretraining on the training tiles only (validation tiles are never seen);
3. frozen features (central windows) of the pretrained encoder, of the same encoder at random
   initialisation (3 seeds) and the `simple` per-band summary statistics, probed by k-NN and logistic
   regression at 2/5/10/all labels per class over 20 label draws;
4. fine-tuning with 5 labels per class from the export and from scratch, 3 seeds each, same labels, steps,
   head and schedule (layer-wise lr decay for the pretrained arm only; each arm's learning rate chosen from
   --lrs by fine-tuning on 4 labels and scoring on the 5th), with McNemar's test;
5. the pretrained RGBN encoder with the NIR band missing (RGB only): its probe score against the full input.

Writes evaluation.csv and evaluation.png into --out. Usage:
  python benchmarks/remote_sensing.py [--out DIR] [--tiles 1000] [--pretrain-epochs 8] [--norm-pix] [--target pixels|frequency|features [--teacher EXPORT]]
      [--mask STRATEGY] [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Subset
from rasterio.windows import Window

from common import link_files, onnx_throughput, parse, parser, report, run_pipeline
from scimae.core.config import run_cli
from scimae.core.evaluate import (encoder_features, extract_features, finetune_rows, held_back,
                                  logistic_predict, predict_classes, probe_rows)
from scimae.domains.remote_sensing import synthetic
from scimae.core.data import seeded_split
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoTasks, band_layout
from scimae.domains.remote_sensing.io import labelled_tiles
from scimae.domains.remote_sensing.io import Band, open_scene
from scimae.domains.remote_sensing.model import GeoModelConfig, build_geo_mae, export_layout, load_geo_mae
from scimae.domains.remote_sensing.transforms import summary_statistics
from scimae.domains.remote_sensing.inference import load_model

MODEL = {"dim": 128, "depth": 4, "heads": 4, "decoder_dim": 96, "decoder_depth": 2, "decoder_heads": 4}


def read_throughput(path: Path, n: int = 400, size: int = 16) -> None:
    cfg = GeoDataConfig()
    rng = np.random.default_rng(0)
    with rasterio.open(path) as src:
        origins = [(int(rng.integers(0, src.height - size + 1)), int(rng.integers(0, src.width - size + 1)))
                   for _ in range(n)]
        t = time.perf_counter()
        for r, c in origins:
            src.read(window=Window(c, r, size, size), masked=True)
        plain = n / (time.perf_counter() - t)
    scene = open_scene(path, cfg.bands)
    t = time.perf_counter()
    for r, c in origins:
        scene.read(r, c, size)
    ours = n / (time.perf_counter() - t)
    print(f"window reads ({size}x{size}, 4 bands): scene reader {ours:.0f}/s, plain rasterio {plain:.0f}/s "
          f"-> ratio {ours / plain:.2f}")


def batches(dataset, size: int = 64) -> DataLoader:
    return DataLoader(dataset, batch_size=size)


def main():
    ap = parser(__doc__, "remote_sensing", pretrain_epochs=8, finetune_epochs=8)
    ap.add_argument("--tiles", type=int, default=1000, help="synthetic tiles (a quarter are validation)")
    ap.add_argument("--norm-pix", action="store_true", help="pretrain on MAE's per-patch normalised target")
    ap.add_argument("--target", choices=["pixels", "frequency", "features"], default="pixels",
                    help="pretraining objective: the hidden patches' values, masked frequency modelling (MFM), or a "
                         "teacher's features of the hidden patches (--teacher)")
    ap.add_argument("--teacher", help="with --target features: the teacher, a pretraining export of this domain")
    ap.add_argument("--mask", help="pretraining mask strategy (default: the pipeline's, group_independent)")
    args = parse(ap, tiles=48)
    out = Path(args.out)
    root = synthetic.write_dataset(n_tiles=args.tiles) / "tiles"
    tiles, names = labelled_tiles(root)
    read_throughput(tiles[0])
    classes = sorted(set(names))
    label = {p: classes.index(n) for p, n in zip(tiles, names)}
    train_paths, val_paths = seeded_split(tiles, 0.25, 0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    train_dir, val_dir = out / f"train_tiles-{stamp}", out / f"val_tiles-{stamp}"  # the split, made once
    for folder, paths in ((train_dir, train_paths), (val_dir, val_paths)):
        link_files(folder, paths, lambda p: p.parent.name)  # class folders
    t = time.perf_counter()
    export = run_pipeline("geo_pretrain", ["--data", str(train_dir), "data.val_fraction=0.1",
                                           *[f"model.{k}={v}" for k, v in MODEL.items()], f"train.epochs={args.pretrain_epochs}",
                                           f"model.norm_pix={args.norm_pix}", f"model.target={args.target}", "data.windows_per_scene=8",
                                           *([f"model.teacher={args.teacher}"] if args.teacher else []),
                                           *([f"model.mask.strategy={args.mask}"] if args.mask else []),
                                           "train.epoch_repeats=2", "train.figure_every=0"], out, f"pretrain-{stamp}")
    print(f"pretraining: {time.perf_counter() - t:.0f} s")
    mae, config = load_geo_mae(export)
    layout = export_layout(config)
    cfg = GeoDataConfig()

    def datasets(bands: list[Band]):
        c = GeoDataConfig(bands=bands, window=cfg.window, patch=cfg.patch)
        return [GeoTasks(paths, c, False, 0, layout, [label[p] for p in paths]) for paths in (train_paths, val_paths)]

    full, rgb = datasets(cfg.bands), datasets(cfg.bands[:3])
    batch = next(iter(batches(full[1])))
    onnx_throughput(mae.encoder, {k: batch[k] for k in ("image", "present", "patch_valid")}, out / f"onnx-{stamp}")

    def features(encoder, sets=full) -> tuple:
        return encoder_features(encoder, *(batches(d) for d in sets))

    def random_encoder(seed: int):
        torch.manual_seed(seed)
        return build_geo_mae(GeoModelConfig(**MODEL), band_layout([b.name for b in cfg.bands], cfg.groups),
                             cfg.window, cfg.patch).encoder

    x_tr, x_va, y_tr, y_va = features(mae.encoder)
    arms = {"pretrained": [(x_tr, x_va)], "random_init": [features(random_encoder(s))[:2] for s in range(args.seeds)],
            "simple": [tuple(extract_features(lambda b: summary_statistics(b["image"], b["patch_valid"]), batches(d))[0]
                             for d in full)]}
    budgets = [2, 5] if args.quick else [2, 5, 10, None]
    rows = probe_rows("remote_sensing", arms, y_tr, y_va, budgets, args.draws)
    labels = 2 if args.quick else 5
    held = held_back([label[p] for p in train_paths], labels)  # the order geo_finetune counts labels in
    check = Subset(full[0], held), y_tr[held]  # scores the learning rates

    def finetune(arm: str, seed: int, lr: float, per_class: int = labels, predict=full[1]):
        extra = ([f"--init-from={export}", "train.layer_decay=0.75"] if arm == "pretrained"
                 else ["train.layer_decay=1.0", *[f"model.{k}={v}" for k, v in MODEL.items()]])
        tuned = run_pipeline("geo_finetune", ["--data", str(train_dir), f"data.val_root={val_dir}", *extra,
                                              f"train.seed={seed}", f"train.lr={lr}", f"train.epochs={args.finetune_epochs}",
                                              "train.val_every=0",
                                              f"task.labels_per_class={per_class}", "data.windows_per_scene=4",
                                              "train.epoch_repeats=5"], out,
                             f"finetune-{arm}-{seed}-{lr:g}-{per_class}-{stamp}", args.threads)
        return predict_classes(load_model(tuned)[0], batches(predict))

    tuned, p_value, chosen = finetune_rows("remote_sensing", finetune, y_va, labels, args.seeds, args.lrs, check,
                                           args.parallel)
    heading = (f"\nscene classification, {len(val_paths)} validation tiles, {len(classes)} layouts (chance "
               f"{1 / len(classes):.3f}); pretraining saw {len(train_paths)} unlabelled training tiles")
    report(rows + tuned, out, heading, p_value, args.seeds, chosen)
    r_tr, r_va, _, _ = features(mae.encoder, rgb)
    with_rgb = (logistic_predict(r_tr, y_tr, r_va) == y_va).mean()
    with_all = (logistic_predict(x_tr, y_tr, x_va) == y_va).mean()
    print(f"pretrained encoder, logistic probe with all labels: RGBN {with_all:.3f}, RGB only (NIR missing) "
          f"{with_rgb:.3f} = {with_rgb / with_all:.0%} of the full-input score")


if __name__ == "__main__":
    run_cli(main)
