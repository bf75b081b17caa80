"""Synthesise a missing MRI contrast of one case and write it as NIfTI on the case's own grid.

  python pipelines/brats_reconstruct.py [--model EXPORT] [--case FOLDER] [--modality t1ce] [--out FILE]

The output has the affine and header of the case's input grid, so it overlays the inputs in any viewer;
intensities are z-scores (the model's units). With no arguments it uses the newest brats_pretrain export
(pretraining one first if there is none) and the first synthetic case that lacks a modality.
"""
import argparse
import logging
import subprocess
import sys
from pathlib import Path

from scimae.core.config import run_cli
from scimae.core.errors import DataError
from scimae.core.files import newest_export
from scimae.domains.brain_mri.data import BrainDataConfig
from scimae.domains.brain_mri.inference import reconstruct_case
from scimae.domains.brain_mri.io import MODALITIES, canonical_modality, discover_cases, write_volume
from scimae.domains.brain_mri.model import load_brain_mae

log = logging.getLogger("brats_reconstruct")


def pretrain() -> None:
    log.info("no brats_pretrain export under runs/; pretraining one with the default config")
    subprocess.run([sys.executable, "-m", "scimae.pipelines.brats_pretrain"], check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a brats_pretrain export folder (default: the newest under runs/)")
    ap.add_argument("--case", help="a folder holding one case's NIfTI files (default: a synthetic case)")
    ap.add_argument("--modality", help=f"the contrast to synthesise, one of {MODALITIES} or an alias "
                                       "(default: the case's first missing one)")
    ap.add_argument("--out", help="output .nii.gz (default: runs/brats_reconstruct/<case>_<modality>.nii.gz)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--uncertainty", type=int, default=0, metavar="K",
                    help="also write <out>_uncertainty.nii.gz: the spread of K syntheses, each from a random three "
                         "quarters of the other modalities' patches (default: none)")
    args = ap.parse_args(argv)
    if args.uncertainty < 0:
        raise ValueError(f"--uncertainty must be >= 0, got {args.uncertainty}")

    if args.case:
        cases = discover_cases(args.case)
        if len(cases) != 1:
            raise DataError(args.case, f"{len(cases)} cases", "a folder with exactly one case")
        case = cases[0]
    else:
        cases = discover_cases(BrainDataConfig().synthetic.write())
        case = next(c for c in cases if len(c.paths) < len(MODALITIES))
    missing = [m for m in MODALITIES if m not in case.paths]
    if not args.modality and not missing:
        raise ValueError(f"{case.case_id} has every contrast; name the one to synthesise with --modality "
                         f"(one of {MODALITIES})")
    modality = canonical_modality(args.modality) if args.modality else missing[0]
    if modality not in MODALITIES:
        raise ValueError(f"--modality must be one of {MODALITIES} (or an alias), got {args.modality!r}")
    folder = args.model or newest_export(Path("runs") / "brats_pretrain", pretrain)
    model, config = load_brain_mae(folder)
    if "task" in config:  # a fine-tuned export: encoder and head, no trained decoder to synthesise with
        raise DataError(Path(folder) / "config.json", "a brats_finetune export (no trained decoder)",
                        "a brats_pretrain export")
    model.eval()

    restored, affine, header = reconstruct_case(model, config, case, modality, args.uncertainty)
    out = Path(args.out or Path("runs") / "brats_reconstruct" / f"{case.case_id}_{modality}.nii.gz")
    write_volume(out, restored[0] if args.uncertainty else restored, affine, header, overwrite=args.overwrite)
    if args.uncertainty:
        stem, dot, suffixes = out.name.partition(".")
        spread = out.with_name(f"{stem}_uncertainty{dot}{suffixes}")
        write_volume(spread, restored[1], affine, header, overwrite=args.overwrite)
        print(f"uncertainty -> {spread}")
    note = "" if modality in missing else " (the case has this contrast: compare them)"
    print(f"{case.case_id}: {modality} synthesised from {sorted(set(case.paths) - {modality})} -> {out}{note}")


if __name__ == "__main__":
    run_cli(main)
