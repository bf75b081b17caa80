"""Map a whole GeoTIFF with a fine-tuned model: overlapping windows, blended, written as a GeoTIFF of
classes (and optionally class probabilities) with the input's CRS, transform and a nodata value.

  python pipelines/geo_predict.py [--model EXPORT] [--input SCENE.tif] [--out FILE.tif] [--probabilities]

Windows are read a row of windows at a time in worker processes while the model runs, and class scores
are blended in a band of rows that is written out as soon as no later window reaches it, so a scene of
any size never sits in memory (benchmarks/geo_predict.py: a 10,000 x 10,000 scene). With no arguments it
uses the newest geo_finetune export (fine-tuning a segmentation model first if there is none) on the
first synthetic tile.
"""
import argparse
import logging
import subprocess
import sys
from pathlib import Path

from scimae.core.config import run_cli
from scimae.core.files import newest_export
from scimae.domains.remote_sensing import synthetic
from scimae.domains.remote_sensing.inference import load_model, predict_scene

log = logging.getLogger("geo_predict")


def finetune() -> None:
    log.info("no geo_finetune export under runs/; fine-tuning a segmentation model first")
    subprocess.run([sys.executable, "-m", "scimae.pipelines.geo_finetune", "task.kind=segmentation"], check=True)


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
