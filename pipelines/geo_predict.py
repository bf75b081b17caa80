"""Map a whole GeoTIFF with a fine-tuned model: overlapping windows, blended, written as a GeoTIFF of
classes (and optionally class probabilities) with the input's CRS, transform and a nodata value.

  python pipelines/geo_predict.py [--model EXPORT] [--input SCENE.tif] [--out FILE.tif] [--probabilities]

Logits are accumulated in a memory-mapped file, so a scene of any size never sits in memory. With no
arguments it uses the newest geo_finetune export (fine-tuning a segmentation model first if there is
none) on the first synthetic tile.
"""
import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from scimae.core.checkpoint import from_pretrained
from scimae.core.config import run_cli
from scimae.core.errors import DataError
from scimae.core.files import newest_export
from scimae.domains.remote_sensing import synthetic
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoWindows
from scimae.domains.remote_sensing.io import Band
from scimae.domains.remote_sensing.model import EXPORT_KEYS, GeoFineTuner, GeoTaskConfig, export_layout, mae_from_config

log = logging.getLogger("geo_predict")
NODATA = 255


def finetune() -> None:
    log.info("no geo_finetune export under runs/; fine-tuning a segmentation model first")
    from scimae.pipelines import geo_finetune

    geo_finetune.main(["task.kind=segmentation"])


def load_model(folder) -> tuple[GeoFineTuner, dict]:
    def build(c: dict) -> GeoFineTuner:
        return GeoFineTuner(mae_from_config(c).encoder, GeoTaskConfig(**c["task"]), len(c["classes"]))

    model, config = from_pretrained(folder, build, "remote_sensing", EXPORT_KEYS + ("task", "classes", "data_bands"))
    return model.eval(), config


def blend_weights(size: int) -> np.ndarray:
    """A tent that favours window centres where windows overlap: [size, size]."""
    ramp = 1.0 - np.abs(np.linspace(-1, 1, size)) + 1e-3
    return np.outer(ramp, ramp).astype(np.float32)


@torch.no_grad()
def predict_scene(model: GeoFineTuner, config: dict, path: Path, out: Path, overlap: float = 0.25,
                  probabilities: bool = False, batch_size: int = 16) -> Path:
    import rasterio

    bands = [Band(**b) for b in config["data_bands"]]
    cfg = GeoDataConfig(root=str(path), bands=bands, window=config["window"], patch=config["patch"])
    windows = GeoWindows([path], cfg, train=False, layout=export_layout(config))
    scene = windows.scene(0)
    size, K = cfg.window, len(config["classes"])
    stride = max(1, int(size * (1 - overlap)))
    rows = list(range(0, max(scene.height - size, 0) + 1, stride))
    cols = list(range(0, max(scene.width - size, 0) + 1, stride))
    rows += [scene.height - size] if rows[-1] + size < scene.height else []
    cols += [scene.width - size] if cols[-1] + size < scene.width else []
    weight = blend_weights(size)
    with tempfile.TemporaryDirectory() as tmp:
        acc = np.lib.format.open_memmap(Path(tmp) / "acc.npy", "w+", np.float32, (K + 1, scene.height, scene.width))
        seen = np.lib.format.open_memmap(Path(tmp) / "seen.npy", "w+", np.bool_, (scene.height, scene.width))
        origins = [(r, c) for r in rows for c in cols]
        for start in range(0, len(origins), batch_size):
            chunk = origins[start:start + batch_size]
            reads = [windows.read_sample(scene, r, c) for r, c in chunk]
            batch = {k: torch.stack([s[k] for s, _ in reads]) for k in reads[0][0]}
            logits = model(batch)
            if logits.ndim == 2:  # a scene classifier paints its class over each window
                logits = logits[:, :, None, None].expand(-1, -1, size, size)
            probs = logits.softmax(1).numpy()  # [b, K, size, size]
            for (r, c), p, (_, v) in zip(chunk, probs, reads):  # v: the window's pixel validity
                h, w = min(size, scene.height - r), min(size, scene.width - c)
                acc[:K, r:r + h, c:c + w] += p[:, :h, :w] * weight[:h, :w]
                acc[K, r:r + h, c:c + w] += weight[:h, :w]
                seen[r:r + h, c:c + w] |= v.any(0)[:h, :w]
        if not seen.any():
            raise DataError(path, "no valid pixel (entirely nodata)", "a scene with data to predict")
        profile = dict(driver="GTiff", width=scene.width, height=scene.height, crs=scene.crs, transform=scene.transform,
                       count=1, dtype="uint8", nodata=NODATA, tiled=True, blockxsize=256, blockysize=256)
        out.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(out, "w", **profile) as dst:
            for r in range(0, scene.height, 256):  # written in strips, never the whole map at once
                a = acc[:, r:r + 256]
                classes = np.where(seen[r:r + 256], a[:K].argmax(0), NODATA).astype(np.uint8)
                dst.write(classes[None], window=((r, r + classes.shape[0]), (0, scene.width)))
            dst.descriptions = ("class",)
            dst.update_tags(classes=",".join(config["classes"]))
        if probabilities:
            with rasterio.open(out.with_name(out.stem + "_probabilities.tif"), "w",
                               **{**profile, "count": K, "dtype": "float32", "nodata": -1.0}) as dst:
                for r in range(0, scene.height, 256):
                    a = acc[:, r:r + 256]
                    p = np.where(seen[r:r + 256], a[:K] / np.maximum(a[K], 1e-6), -1.0).astype(np.float32)
                    dst.write(p, window=((r, r + p.shape[1]), (0, scene.width)))
                dst.descriptions = tuple(config["classes"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a geo_finetune export (default: the newest under runs/)")
    ap.add_argument("--input", help="a GeoTIFF (default: the first synthetic tile)")
    ap.add_argument("--out", help="output GeoTIFF (default: runs/geo_predict/<input>_classes.tif)")
    ap.add_argument("--probabilities", action="store_true", help="also write <out>_probabilities.tif")
    ap.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction (default: %(default)s)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    if not 0 <= args.overlap < 1:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    path = Path(args.input) if args.input else sorted((synthetic.write_dataset() / "tiles").rglob("*.tif"))[0]
    out = Path(args.out) if args.out else Path("runs") / "geo_predict" / f"{path.stem}_classes.tif"
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    model, config = load_model(args.model or newest_export(Path("runs") / "geo_finetune", finetune))
    predict_scene(model, config, path, out, args.overlap, args.probabilities)
    print(f"{path} -> {out}")


if __name__ == "__main__":
    run_cli(main)
