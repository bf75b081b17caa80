"""geo_predict at scale: peak memory and speed of mapping a large GeoTIFF, against the model's forward-only rate.

From one run:

1. a SIZE x SIZE 4-band GeoTIFF (uint8, tiled, a nodata corner) written strip by strip;
2. a segmentation model of the remote-sensing benchmark's size at random initialisation, written as an export
   (speed and memory do not depend on the weights);
3. the model's forward-only rate on windows of the scene (batch 64, windows read beforehand);
4. ``python -m scimae.pipelines.geo_predict`` on the scene in a child process, as a user runs it: windows per
   second and the peak memory (PSS) of its process tree (its DataLoader workers included; sampled every
   0.2 s).

Usage: python benchmarks/geo_predict.py [--size 10000] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import cores, run_with_peak_memory
from remote_sensing import MODEL
from scimae.core.checkpoint import save_export
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoWindows
from scimae.domains.remote_sensing.finetune import GeoTaskConfig, geo_finetuner
from scimae.domains.remote_sensing.inference import load_model, window_starts
from scimae.domains.remote_sensing.io import Band
from scimae.domains.remote_sensing.model import GeoModelConfig, build_geo_mae, export_config

BANDS = ["R", "G", "B", "NIR"]


def write_scene(path: Path, size: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint8", nodata=0, crs="EPSG:32614",
                   transform=from_origin(500000, 4500000, 1.0, 1.0), tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 256):
            h = min(256, size - r)
            strip = rng.integers(1, 256, (4, h, size), dtype=np.uint8)
            if r < size // 10:
                strip[:, :, : size // 10] = 0  # nodata corner
            dst.write(strip, window=((r, r + h), (0, size)))
        dst.descriptions = tuple(BANDS)
    return path


def write_model(folder: Path) -> Path:
    torch.manual_seed(0)
    data = GeoDataConfig(bands=[Band(n) for n in BANDS])
    layout = {n: [n] for n in BANDS}
    model_cfg = GeoModelConfig(**MODEL)
    task = GeoTaskConfig(kind="segmentation")
    model = geo_finetuner(build_geo_mae(model_cfg, layout, data.window, data.patch).encoder, task, task.classes)
    config = export_config(model_cfg, data, layout, data_bands=[vars(b) for b in data.bands], task=vars(task),
                           classes=[str(i) for i in range(task.classes)])
    return save_export(folder, model, config)


@torch.inference_mode()
def forward_rate(export: Path, scene: Path, n: int = 2048) -> float:
    """Windows per second of the model alone, on ``n`` windows read beforehand."""
    model, config = load_model(export)
    cfg = GeoDataConfig(root=str(scene), bands=[Band(n) for n in BANDS])
    windows = GeoWindows([scene], cfg, train=False)
    opened, size = windows.scene(0), cfg.window
    last = opened.height - size  # windows on a grid in the scene's bottom right, clear of the nodata corner
    reads = [windows.read_sample(opened, last - 24 * (i // 32) % (last // 2), last - 24 * (i % 32) % (last // 2))[0]
             for i in range(n)]
    batches = [{k: torch.stack([s[k] for s in reads[i:i + 64]]) for k in ("image", "present", "patch_valid")}
               for i in range(0, n, 64)]
    model(batches[0])
    t = time.perf_counter()
    for b in batches:
        model(b)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/benchmark_geo_predict")
    ap.add_argument("--size", type=int, default=10000, help="scene side in pixels")
    ap.add_argument("--quick", action="store_true", help="a 1,000-pixel scene (tests)")
    args = ap.parse_args()
    size = 1000 if args.quick else args.size
    torch.set_num_threads(cores())
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    t = time.perf_counter()
    scene = write_scene(out / "scene.tif", size)
    print(f"scene: {size} x {size} x 4 written in {time.perf_counter() - t:.0f} s")
    export = write_model(out / "model")
    rate = forward_rate(export, scene)
    window = GeoDataConfig().window
    n_windows = len(window_starts(size, window, int(window * 0.75))) ** 2  # geo_predict's default overlap, 0.25
    cmd = [sys.executable, "-m", "scimae.pipelines.geo_predict", "--model", str(export), "--input", str(scene),
           "--out", str(out / "classes.tif")]
    t = time.perf_counter()
    peak = run_with_peak_memory(cmd)
    seconds = time.perf_counter() - t
    mapped = n_windows / seconds
    print(f"geo_predict: {n_windows} windows of {window} x {window} in {seconds:.0f} s = {mapped:.0f} windows/s "
          f"({size * size / seconds / 1e6:.2f} Mpixel/s), peak memory (PSS) {peak / 2 ** 30:.2f} GiB "
          f"of the process tree; forward alone {rate:.0f} windows/s -> geo_predict / forward = {mapped / rate:.2f}")
    print(f"model {MODEL}, {cores()} cores")


if __name__ == "__main__":
    main()
