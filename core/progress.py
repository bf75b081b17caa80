"""What a run shows while it works: progress bars on a terminal (log lines elsewhere) and loss curves."""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    """Iterate ``items`` with a tqdm bar on a terminal; elsewhere log one line as the stage starts and one as
    it ends, so a batch job's log still says where the time went."""
    from tqdm.auto import tqdm

    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if not enabled:
        yield from items
        return
    if on_terminal():
        yield from tqdm(items, desc=desc, total=total, unit="item", leave=False)
        return
    log.info("%s: %s items", desc, total if total is not None else "?")
    n = 0
    for n, item in enumerate(items, 1):
        yield item
    log.info("%s: done (%d items)", desc, n)


def training_bar(total: int, initial: int, enabled: bool):
    """The training bar: steps, step rate and ETA, and the total loss as its one postfix."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not (enabled and on_terminal()), unit="step",
                dynamic_ncols=True)


def save_curves(rows: list[dict], path: str | Path) -> Path | None:
    """``curves.png``: training and validation losses over steps, the total on the left and each group's
    ('loss/<group>') on the right. ``rows`` are metrics.csv rows; None when they hold no loss."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    def series(kind: str, key: str):
        pts = [(int(r["step"]), float(r[key])) for r in rows
               if r.get("kind") == kind and r.get(key) not in (None, "") and math.isfinite(float(r[key]))]
        return list(zip(*pts)) if pts else None

    groups = list(dict.fromkeys(k[5:] for r in rows for k in r if k.startswith("loss/") and r.get(k) not in (None, "")))
    if series("train", "loss") is None:
        return None
    fig, axes = plt.subplots(1, 2 if groups else 1, figsize=(12 if groups else 6, 4), squeeze=False)
    total_ax = axes[0, 0]
    for kind, key, style in (("train", "loss", "-"), ("val", "val_loss", "o--")):
        s = series(kind, key)
        if s:
            total_ax.plot(*s, style, label=kind)
    total_ax.set(title="total loss", xlabel="step", ylabel="loss")
    total_ax.legend()
    if groups:
        ax = axes[0, 1]
        for i, g in enumerate(groups):
            color = f"C{i % 10}"
            for kind, key, style in (("train", f"loss/{g}", "-"), ("val", f"val_loss/{g}", "o--")):
                s = series(kind, key)
                if s:
                    ax.plot(*s, style, color=color, label=g if kind == "train" else None, markersize=3)
        ax.set(title="loss per group (train -, validation o--)", xlabel="step")
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
