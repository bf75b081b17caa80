"""Remote-sensing benchmark, from one run on the synthetic tiles:

1. window-read throughput of the scene reader against a plain rasterio read of the same windows;
2. classification fine-tuning from the pretrained RGBN export against training from scratch, at the same
   labels and steps, and the RGBN-pretrained model fine-tuned on RGB only.

Usage: python benchmarks/remote_sensing.py [--pretrain-epochs 10] [--finetune-epochs 8]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))
import geo_finetune  # noqa: E402
import geo_pretrain  # noqa: E402
from domains.remote_sensing import synthetic  # noqa: E402
from domains.remote_sensing.data import GeoDataConfig  # noqa: E402
from domains.remote_sensing.io import open_scene  # noqa: E402


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


def last_val(run: Path, key: str) -> float:
    return float([r for r in csv.DictReader((run / "metrics.csv").open()) if r["kind"] == "val"][-1][key])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "runs" / "benchmark_remote_sensing"))
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tiles = sorted((synthetic.write_dataset() / "tiles").rglob("*.tif"))
    read_throughput(tiles[0])
    geo_pretrain.main([f"train.out_dir={args.out}", f"train.run_name=pretrain-{stamp}", f"train.epochs={args.pretrain_epochs}"])
    export = f"--init-from={Path(args.out) / f'pretrain-{stamp}' / 'export'}"
    rgb = "data.bands=[{name: R, mean: 100, std: 55}, {name: G, mean: 100, std: 55}, {name: B, mean: 100, std: 55}]"
    scores = {}
    for name, extra in (("scratch RGBN", []), ("pretrained RGBN", [export]), ("scratch RGB", [rgb]),
                        ("pretrained RGBN -> RGB", [rgb, export])):
        run = f"{name.replace(' ', '_').replace('->', 'to')}-{stamp}"
        geo_finetune.main([f"train.out_dir={args.out}", f"train.run_name={run}", f"train.epochs={args.finetune_epochs}",
                           *extra])
        scores[name] = (last_val(Path(args.out) / run, "accuracy"), last_val(Path(args.out) / run, "macro_f1"))
    print("scene classification on validation tiles, same labels and steps (accuracy, macro-F1):")
    for name, (acc, f1) in scores.items():
        print(f"  {name:24s} {acc:.3f}  {f1:.3f}")


if __name__ == "__main__":
    main()
