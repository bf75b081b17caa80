"""Remote-sensing benchmark, from one run on the synthetic tiles:

1. window-read throughput of the scene reader against a plain rasterio read of the same windows;
2. scene classification with few labels (--labels-per-class tiles of each class; pretraining sees every
   training tile, unlabelled): a frozen-encoder probe and full fine-tuning, from the pretrained RGBN export
   against a random initialisation at the same labels and steps, and the RGBN-pretrained model on RGB only.

Usage: python benchmarks/remote_sensing.py [--tiles 200] [--labels-per-class 4] [--pretrain-epochs 10]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from scimae.pipelines import geo_finetune
from scimae.pipelines import geo_pretrain
from scimae.core.config import run_cli
from scimae.core.engine import read_metrics
from scimae.domains.remote_sensing import synthetic
from scimae.domains.remote_sensing.data import GeoDataConfig
from scimae.domains.remote_sensing.io import open_scene

ROOT = Path(__file__).resolve().parents[1]


def read_throughput(path: Path, n: int = 400, size: int = 32) -> None:
    cfg = GeoDataConfig()
    rng = np.random.default_rng(0)
    with rasterio.open(path) as src:
        origins = [(int(rng.integers(0, src.height - size)), int(rng.integers(0, src.width - size))) for _ in range(n)]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--labels-per-class", type=int, default=4)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmark_remote_sensing"))
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tiles = sorted((synthetic.write_dataset(n_tiles=args.tiles) / "tiles").rglob("*.tif"))
    read_throughput(tiles[0])
    data = [f"data.synthetic.tiles={args.tiles}", f"train.out_dir={args.out}"]
    geo_pretrain.main([*data, f"train.run_name=pretrain-{stamp}", f"train.epochs={args.pretrain_epochs}"])
    export = f"--init-from={Path(args.out) / f'pretrain-{stamp}' / 'export'}"
    rgb = "data.bands=[{name: R, mean: 100, std: 55}, {name: G, mean: 100, std: 55}, {name: B, mean: 100, std: 55}]"
    frozen = "task.freeze_encoder=true"
    scores = {}
    for name, extra in (("frozen probe, random RGBN", [frozen]), ("frozen probe, pretrained RGBN", [frozen, export]),
                        ("fine-tune, scratch RGBN", []), ("fine-tune, pretrained RGBN", [export]),
                        ("fine-tune, scratch RGB", [rgb]), ("fine-tune, pretrained RGBN -> RGB", [rgb, export])):
        run = f"{name.replace(', ', '_').replace(' ', '_').replace('->', 'to')}-{stamp}"
        geo_finetune.main([*data, f"train.run_name={run}", f"train.epochs={args.finetune_epochs}",
                           f"task.labels_per_class={args.labels_per_class}", "train.epoch_repeats=5", *extra])
        last = read_metrics(Path(args.out) / run, "val")[-1]
        scores[name] = (float(last["accuracy"]), float(last["macro_f1"]))
    print(f"scene classification, {args.labels_per_class} labelled tiles per class, validation tiles "
          "(accuracy, macro-F1):")
    for name, (acc, f1) in scores.items():
        print(f"  {name:34s} {acc:.3f}  {f1:.3f}")


if __name__ == "__main__":
    run_cli(main)
