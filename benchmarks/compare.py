"""Compare two runs of a domain benchmark: an objective (or any pretraining setting) against the default.

Reads the two runs' evaluation.csv and prints, for the pretrained arm of every protocol and label budget both have,
each run's mean, the difference (B - A) and its Welch 95% confidence interval from the runs' means, standard
deviations and run counts. Both runs draw the same labels and seeds, so pairing would narrow the interval: the
Welch interval is the conservative one. Usage:
  python benchmarks/compare.py A/evaluation.csv B/evaluation.csv [--arm pretrained]
"""
from __future__ import annotations

import argparse
import csv
import math

from scipy import stats


def read(path: str, arm: str) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as f:
        return {(r["protocol"], r["labels_per_class"]): r for r in csv.DictReader(f) if r["arm"] == arm}


def welch(a: dict, b: dict) -> tuple[float, float, float]:
    """B's mean minus A's with the Welch 95% interval (the difference alone when either ran once)."""
    (ma, sa, na), (mb, sb, nb) = ((float(r["mean"]), float(r["std"]), int(r["n_runs"])) for r in (a, b))
    diff = mb - ma
    if na < 2 or nb < 2:
        return diff, math.nan, math.nan
    va, vb = sa ** 2 / na, sb ** 2 / nb
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the default's evaluation.csv")
    ap.add_argument("b", help="the other setting's evaluation.csv")
    ap.add_argument("--arm", default="pretrained")
    args = ap.parse_args()
    a, b = read(args.a, args.arm), read(args.b, args.arm)
    print(f"{'protocol':9} {'labels':>6} {'A':>7} {'B':>7}  B - A [Welch 95% CI]")
    for key in (k for k in a if k in b):
        diff, low, high = welch(a[key], b[key])
        ci = "" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]"
        print(f"{key[0]:9} {key[1]:>6} {float(a[key]['mean']):7.3f} {float(b[key]['mean']):7.3f}  {diff:+.3f}{ci}")


if __name__ == "__main__":
    main()
