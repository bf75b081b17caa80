"""3D benchmark: does masked pretraining pay on objects that only the arrangement of their parts tells apart?

From one run:

1. farthest point sampling, kNN and Chamfer distance: every available backend (torch, open3d on the CPU,
   pytorch3d where installed) on the same inputs, with whether it agrees with torch (where open3d is installed
   the point-cloud datasets run its FPS per cloud in the data workers, so the step only runs kNN);
2. one split of the synthetic clouds (four chiral objects and their mirror images, randomly rotated: the
   classes are left and right), then pretraining on the training clouds only;
3. frozen features (max-and-mean pooled) of the pretrained encoder, of the same encoder at random
   initialisation (3 seeds) and the `simple` rotation- and reflection-invariant statistics, probed by k-NN
   and logistic regression at 2/5/10/all labels per class over 20 label draws;
4. fine-tuning with 5 labels per class from the export and from scratch, 3 seeds each, same labels, steps,
   head and schedule (layer-wise lr decay for the pretrained arm only; each arm's learning rate chosen from
   --lrs by fine-tuning on 4 labels and scoring on the 5th), with McNemar's test.

Writes evaluation.csv and evaluation.png into --out. Usage:
  python benchmarks/scene3d.py [--out DIR] [--per-class 400] [--pretrain-epochs 6] [--lrs ...] [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from common import link_files, parse, parser, report, run_pipeline
from core_step import interleaved, stepper
from scimae.core.config import run_cli
from scimae.core.engine import make_optimizer
from scimae.core.evaluate import (encoder_features, extract_features, finetune_rows, held_back,
                                   predict_classes, probe_rows)
from scimae.core.losses import chamfer_torch
from scimae.domains.scene3d import synthetic
from scimae.core.data import seeded_split
from scimae.domains.scene3d.data import PointClouds, PointDataConfig, find_clouds
from scimae.domains.scene3d.finetune import load_point_classifier
from scimae.domains.scene3d.model import PointModelConfig, build_point_mae, load_point_mae
from scimae.domains.scene3d.transforms import (cloud_centres, farthest_point_sample, has_pytorch3d, knn,
                                               summary_statistics)

MODEL = {"dim": 128, "depth": 4, "heads": 4, "decoder_dim": 96, "decoder_depth": 1, "decoder_heads": 4}
DATA = {"n_points": 512, "n_groups": 32, "group_size": 16}  # a quarter of Point-MAE's points per step: CPU-sized


def per_call(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def open3d_fps(points: torch.Tensor, k: int) -> torch.Tensor:
    """open3d's FPS as the data workers run it, one call per cloud (index order) -> [B, k]."""
    import numpy as np

    return torch.from_numpy(np.stack([cloud_centres(p, k) for p in points.cpu().numpy()]))


def open3d_knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """open3d's NearestNeighborSearch (a KD-tree), one per cloud -> [B, M, k]."""
    import numpy as np
    import open3d as o3d

    out = []
    for q, p in zip(query.cpu().numpy(), points.cpu().numpy()):
        search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(p))
        search.knn_index()
        out.append(search.knn_search(o3d.core.Tensor(q), k)[0].numpy())
    return torch.from_numpy(np.stack(out)).long()


def point_ops(device: torch.device) -> None:
    """Every available backend's time for each point operation on the same inputs, and whether it agrees with the
    torch implementation (FPS: the same set of points; kNN: the same neighbours, whatever the order of near-ties)."""
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(32, 1024, 3, generator=g).to(device)
    centres = pts[:, :64]
    groups = torch.rand(32 * 64, 32, 3, generator=g).to(device)
    p3d = has_pytorch3d()
    try:
        import open3d  # noqa: F401
        o3d = device.type == "cpu"
    except ImportError:
        o3d = False
    as_set = lambda idx: idx.sort(-1).values  # noqa: E731
    ops = {"FPS (32 x 1024 -> 64)": (lambda: farthest_point_sample(pts, 64, False), as_set,
                                     {"pytorch3d": p3d and (lambda: farthest_point_sample(pts, 64, True)),
                                      "open3d": o3d and (lambda: open3d_fps(pts, 64))}),
           "kNN (32 x 64 queries, k=32)": (lambda: knn(centres, pts, 32, False), as_set,
                                           {"pytorch3d": p3d and (lambda: knn(centres, pts, 32, True)),
                                            "open3d": o3d and (lambda: open3d_knn(centres, pts, 32))}),
           "Chamfer (2048 groups of 32)": (lambda: chamfer_torch(groups, groups.flip(1)), lambda d: d.round(decimals=4),
                                           {"pytorch3d": p3d and (lambda: _p3d_chamfer(groups))})}
    print(f"point ops on {device} (backends: torch{', open3d' if o3d else ''}{', pytorch3d' if p3d else ''}; "
          f"{'' if p3d else 'pytorch3d not installed'}):")
    for name, (reference, key, others) in ops.items():
        base = per_call(reference)
        line = f"  {name:30s} torch {base * 1e3:7.2f} ms"
        for backend, op in others.items():
            if op:
                t = per_call(op)
                same = torch.equal(key(op().cpu()), key(reference().cpu()))
                line += f"  {backend} {t * 1e3:7.2f} ms (torch / {backend} {base / t:.2f}, {'agrees' if same else 'DIFFERS'})"
        print(line)


def grouping_in_step(model, dataset) -> None:
    """The pretraining step on 32 clouds with the FPS centres the data workers computed (open3d) against the same
    step running FPS itself (torch or pytorch3d)."""
    batch = next(iter(DataLoader(dataset, batch_size=32)))
    if "centres" not in batch:
        print("pretraining step: open3d not installed, FPS runs in the step")
        return
    g, opt = torch.Generator().manual_seed(0), make_optimizer(model.parameters(), 1e-4)
    alone = {k: v for k, v in batch.items() if k != "centres"}
    t = interleaved({"workers": stepper(model, lambda m: m(batch, g)["loss"], opt),
                     "step": stepper(model, lambda m: m(alone, g)["loss"], opt)}, 5)
    print(f"pretraining step, 32 clouds: FPS in the data workers {t['workers'] * 1e3:.0f} ms, FPS in the step "
          f"{t['step'] * 1e3:.0f} ms -> {t['step'] / t['workers']:.2f}x")


def _p3d_chamfer(groups: torch.Tensor) -> torch.Tensor:
    from pytorch3d.loss import chamfer_distance

    return chamfer_distance(groups, groups.flip(1), batch_reduction=None)[0]


def main():
    ap = parser(__doc__, "scene3d", pretrain_epochs=6)
    ap.add_argument("--per-class", type=int, default=400, help="synthetic clouds per class (a quarter are validation)")
    args = parse(ap, per_class=16)
    point_ops(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    root = synthetic.write_dataset(None, args.per_class) / "shapes"
    entries, classes = find_clouds(root)
    train, val = seeded_split(entries, 0.25, 0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    train_dir, val_dir = out / f"train_clouds-{stamp}", out / f"val_clouds-{stamp}"  # the split, made once
    for folder, side in ((train_dir, train), (val_dir, val)):
        link_files(folder, [e.path for e in side], lambda p: p.parent.name)  # class folders
    t = time.perf_counter()
    export = run_pipeline("pointcloud_pretrain", ["--data", str(train_dir), "data.val_fraction=0.1",
                                                  *[f"data.{k}={v}" for k, v in DATA.items()],
                                                  *[f"model.{k}={v}" for k, v in MODEL.items()],
                                                  f"train.epochs={args.pretrain_epochs}", "train.epoch_repeats=16",
                                                  "train.figure_every=0"], out, f"pretrain-{stamp}")
    print(f"pretraining: {time.perf_counter() - t:.0f} s")
    mae, config = load_point_mae(export)
    cfg = PointDataConfig(**DATA)
    sets = [PointClouds(side, cfg, train=False) for side in (train, val)]
    grouping_in_step(build_point_mae(PointModelConfig(**MODEL), cfg.n_groups, cfg.group_size), sets[0])

    def features(encoder) -> tuple:
        return encoder_features(encoder, *(DataLoader(d, batch_size=64) for d in sets), "max_mean")

    def random_encoder(seed: int):
        torch.manual_seed(seed)
        return build_point_mae(PointModelConfig(**MODEL), cfg.n_groups, cfg.group_size).encoder

    x_tr, x_va, y_tr, y_va = features(mae.encoder)
    arms = {"pretrained": [(x_tr, x_va)], "random_init": [features(random_encoder(s))[:2] for s in range(args.seeds)],
            "simple": [tuple(extract_features(lambda b: summary_statistics(b["points"]), DataLoader(d, batch_size=64))[0]
                             for d in sets)]}
    budgets = [2, 5] if args.quick else [2, 5, 10, None]
    rows = probe_rows("scene3d", arms, y_tr, y_va, budgets, args.draws)
    labels = 2 if args.quick else 5
    held = held_back([e.label for e in train], labels)  # the order pointcloud_finetune counts labels in
    check = Subset(sets[0], held), y_tr[held]  # scores the learning rates

    def finetune(arm: str, seed: int, lr: float, per_class: int = labels, predict=sets[1]):
        extra = ([f"--init-from={export}", "train.layer_decay=0.75"] if arm == "pretrained"
                 else ["train.layer_decay=1.0", *[f"model.{k}={v}" for k, v in MODEL.items() if k in ("dim", "depth", "heads")]])
        tuned = run_pipeline("pointcloud_finetune", ["--data", str(train_dir), f"data.val_root={val_dir}",
                                                     *[f"data.{k}={v}" for k, v in DATA.items()], *extra,
                                                     f"train.seed={seed}", f"train.lr={lr}",
                                                     f"train.epochs={args.finetune_epochs}", "train.val_every=0",
                                                     f"task.labels_per_class={per_class}", "train.epoch_repeats=32",
                                                     "train.warmup_epochs=0.5", "train.batch_size=10"],
                             out, f"finetune-{arm}-{seed}-{lr:g}-{per_class}-{stamp}", args.threads)
        return predict_classes(load_point_classifier(tuned)[0], DataLoader(predict, batch_size=64))

    tuned, p_value, chosen = finetune_rows("scene3d", finetune, y_va, labels, args.seeds, args.lrs, check,
                                           args.parallel)
    heading = (f"\nhandedness ({' vs '.join(classes)}) of {len(synthetic.FAMILIES)} chiral objects, {len(val)} "
               f"validation clouds (chance 0.500); pretraining saw {len(train)} unlabelled training clouds")
    report(rows + tuned, out, heading, p_value, args.seeds, chosen)


if __name__ == "__main__":
    run_cli(main)
