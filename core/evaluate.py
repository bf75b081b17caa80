"""Whether pretraining pays, measured honestly: frozen-feature probes (k-NN, logistic regression) at several
label budgets over many label draws, fine-tuning over seeds, and the gap of each arm over its baseline with a
paired bootstrap CI (and McNemar's test for fine-tuning).

Arms: ``pretrained`` (the export's encoder), ``random_init`` (the same architecture untrained, several seeds),
``scratch`` (fine-tuning from random initialisation) and ``simple`` (a domain's hand-made summary statistics,
which show whether the task can be solved without structure). Scores are accuracies.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COLUMNS = ["domain", "protocol", "labels_per_class", "arm", "metric", "mean", "std", "n_runs", "gap", "gap_ci_low",
           "gap_ci_high"]


@dataclass
class Row:
    """One line of evaluation.csv: an arm's score under one protocol and label budget, and its gap over the
    baseline arm (``random_init`` for probes, ``scratch`` for fine-tuning; empty for the baseline itself)."""

    domain: str
    protocol: str  # knn, logistic or finetune
    labels_per_class: str  # a number, or "all"
    arm: str  # pretrained, random_init, scratch or simple
    metric: str
    mean: float
    std: float
    n_runs: int
    gap: float | None = None
    gap_ci_low: float | None = None
    gap_ci_high: float | None = None


@torch.no_grad()
def extract_features(embed: Callable, batches: Iterable, label_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``embed(batch) -> [B, D]`` (the domain's pooling of its encoder) over every batch, once, without
    gradients -> (features [N, D] float64, labels [N])."""
    feats, labels = [], []
    for batch in batches:
        feats.append(embed(batch).float().cpu())
        labels.append(batch[label_key].cpu())
    return torch.cat(feats).double().numpy(), torch.cat(labels).numpy()


@torch.no_grad()
def predict_classes(model: torch.nn.Module, batches: Iterable) -> np.ndarray:
    """The class a fine-tuned classifier gives each sample of ``batches`` (in evaluation mode) -> [N]."""
    model.eval()
    return torch.cat([model(b).argmax(1).cpu() for b in batches]).numpy()


def encoder_features(encoder, train: Iterable, val: Iterable, pooling: str = "mean") -> tuple:
    """Frozen, pooled features of an encoder (``Pooler`` mode ``pooling``, the domain's) over train and
    validation batches -> (x_train, x_val, y_train, y_val)."""
    from scimae.core.heads import Pooler

    encoder.eval()
    pool = Pooler(encoder.dim, pooling)
    (x_tr, y_tr), (x_va, y_va) = (extract_features(lambda b: pool(encoder(b)), batches) for batches in (train, val))
    return x_tr, x_va, y_tr, y_va


def label_draws(labels: np.ndarray, per_class: int | None, n_draws: int, seed: int = 0) -> list[np.ndarray]:
    """``n_draws`` index sets holding ``per_class`` items of every class (every item when None), one
    generator per draw so the same (seed, draw) gives the same set for every arm."""
    classes = np.unique(labels)
    draws = []
    for d in range(n_draws if per_class is not None else 1):
        rng = np.random.default_rng([seed, d])
        if per_class is None:
            draws.append(np.arange(len(labels)))
            continue
        picks = []
        for c in classes:
            members = np.flatnonzero(labels == c)
            if len(members) < per_class:
                raise ValueError(f"class {c} has {len(members)} training items, fewer than {per_class} per class")
            picks.append(rng.choice(members, per_class, replace=False))
        draws.append(np.sort(np.concatenate(picks)))
    return draws


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, k: int = 20) -> np.ndarray:
    """k-NN on cosine distance, neighbours weighted by inverse distance."""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=min(k, len(y_train)), metric="cosine", weights="distance").fit(
        x_train, y_train).predict(x_val)


def logistic_predict(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    """Logistic regression on standardised features, fitted to convergence, its C chosen by stratified
    cross-validation (log-loss) on the training labels alone (C = 1 when a class has a single label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, int(np.bincount(np.unique(y_train, return_inverse=True)[1]).min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    if folds >= 2:
        model = GridSearchCV(model, {"logisticregression__C": np.logspace(-3, 1, 5)}, scoring="neg_log_loss",
                             cv=StratifiedKFold(folds, shuffle=True, random_state=0), n_jobs=-1)
    return model.fit(x_train, y_train).predict(x_val)


PROTOCOLS = {"knn": knn_predict, "logistic": logistic_predict}


def paired_gap(scores: np.ndarray, baseline: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the paired differences ``scores - baseline`` (one pair per label draw or seed) and its 95%
    percentile bootstrap CI (scipy.stats.bootstrap, 10,000 resamples)."""
    from scipy.stats import bootstrap

    diff = np.asarray(scores, np.float64) - np.asarray(baseline, np.float64)
    if len(diff) < 2 or np.ptp(diff) == 0:
        return float(diff.mean()), float(diff.mean()), float(diff.mean())
    ci = bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=10_000, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return float(diff.mean()), float(ci.low), float(ci.high)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test (two-sided binomial test on the discordant pairs) of two classifiers' per-item
    correctness on the same items: the p-value."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def probe_rows(domain: str, arms: dict[str, list[tuple[np.ndarray, np.ndarray]]], y_train: np.ndarray,
               y_val: np.ndarray, budgets: Sequence[int | None], n_draws: int = 20, seed: int = 0) -> list[Row]:
    """Score every arm's frozen features with each probe at each label budget over ``n_draws`` label draws.

    ``arms`` maps an arm to its features, one (train [N, D], validation [M, D]) pair per seed of that arm
    (several for ``random_init``). Every arm sees the same draws; an arm's score for a draw is the mean over
    its seeds, and its gap over ``random_init`` is paired by draw.
    """
    rows = []
    for protocol, predict in PROTOCOLS.items():
        for per_class in budgets:
            draws = label_draws(y_train, per_class, n_draws, seed)
            runs = {arm: np.array([[float((predict(tr[idx], y_train[idx], va) == y_val).mean()) for idx in draws]
                                   for tr, va in feats]) for arm, feats in arms.items()}  # [seeds, draws]
            for arm, r in runs.items():
                row = Row(domain, protocol, "all" if per_class is None else str(per_class), arm, "accuracy",
                          float(r.mean()), float(r.std()), int(r.size))
                if arm != "random_init" and "random_init" in runs:
                    row.gap, row.gap_ci_low, row.gap_ci_high = paired_gap(r.mean(0), runs["random_init"].mean(0), seed)
                rows.append(row)
    return rows


def _held(per_class: int) -> int:
    """Labels per class held back from a budget of ``per_class`` to score learning rates on."""
    if per_class < 2:
        raise ValueError(f"choosing a learning rate needs >= 2 labels per class, got {per_class}")
    return max(1, per_class // 3)


def held_back(labels: Sequence[int], per_class: int) -> list[int]:
    """Indices of the last ``max(1, per_class // 3)`` of the first ``per_class`` items of each class, in order.
    With a budget of ``per_class`` labels (the first of each class, as ``core.heads.first_per_class`` keeps them),
    ``finetune_rows`` chooses a learning rate by training on the first ones and scoring on these."""
    held = _held(per_class)
    count: dict[int, int] = {}
    kept = []
    for i, label in enumerate(labels):
        count[label] = count.get(label, 0) + 1
        if per_class - held < count[label] <= per_class:
            kept.append(i)
    return kept


def finetune_rows(domain: str, run: Callable[..., np.ndarray], y_val: np.ndarray, labels_per_class: int | None,
                  seeds: int = 3, lrs: Sequence[float] = (), check: tuple | None = None, workers: int = 1
                  ) -> tuple[list[Row], float, dict[str, float]]:
    """Fine-tune from ``pretrained`` and from ``scratch`` with ``seeds`` seeds each: ``run(arm, seed, lr)`` trains
    on ``labels_per_class`` labels with the same labels, steps, head and schedule and returns its validation
    predictions [M]. With several ``lrs`` each arm gets the one that scores best on ``check`` = (items, labels),
    the ``held_back`` training labels: ``run(arm, 0, lr, per_class, items)`` trains on the rest of the budget
    and predicts ``items`` (never validation; the first of ``lrs`` on ties). ``workers`` runs go at a time (each
    ``run`` a process of its own). Returns the rows (the gap paired by seed), McNemar's p-value on the pooled
    paired predictions and the chosen rates."""
    arms = ("pretrained", "scratch")
    if not lrs:
        raise ValueError("finetune_rows needs at least one learning rate")

    def score(arm: str, lr: float) -> float:
        items, labels = check
        return float((np.asarray(run(arm, 0, lr, labels_per_class - _held(labels_per_class), items)) == labels).mean())

    with ThreadPoolExecutor(workers) as pool:
        if check is not None and len(lrs) > 1:
            trials = [(arm, lr) for arm in arms for lr in lrs]
            scores = dict(zip(trials, pool.map(lambda t: score(*t), trials)))
            chosen = {arm: max(lrs, key=lambda lr: scores[arm, lr]) for arm in arms}
        else:
            chosen = {arm: lrs[0] for arm in arms}
        jobs = [(arm, s) for arm in arms for s in range(seeds)]
        done = dict(zip(jobs, pool.map(lambda j: np.asarray(run(j[0], j[1], chosen[j[0]])), jobs)))
    preds = {arm: [done[arm, s] for s in range(seeds)] for arm in arms}
    acc = {arm: np.array([(p == y_val).mean() for p in ps]) for arm, ps in preds.items()}
    budget = "all" if labels_per_class is None else str(labels_per_class)
    rows = [Row(domain, "finetune", budget, "scratch", "accuracy", float(acc["scratch"].mean()),
                float(acc["scratch"].std()), seeds)]
    gap = paired_gap(acc["pretrained"], acc["scratch"])
    rows.insert(0, Row(domain, "finetune", budget, "pretrained", "accuracy", float(acc["pretrained"].mean()),
                       float(acc["pretrained"].std()), seeds, *gap))
    correct = {arm: np.concatenate([p == y_val for p in ps]) for arm, ps in preds.items()}
    return rows, mcnemar(correct["pretrained"], correct["scratch"]), chosen


def write_evaluation(rows: list[Row], out: str | Path) -> tuple[Path, Path]:
    """``evaluation.csv`` (the COLUMNS, one row per protocol, budget and arm) and ``evaluation.png`` (bars with
    std error bars per arm and label budget, one panel per protocol) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "evaluation.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else round(v, 4) if isinstance(v, float) else v)
                             for k, v in dataclasses.asdict(row).items()})
    protocols = list(dict.fromkeys(r.protocol for r in rows))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 3.6), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        mine = [r for r in rows if r.protocol == protocol]
        budgets, arms = list(dict.fromkeys(r.labels_per_class for r in mine)), list(dict.fromkeys(r.arm for r in mine))
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            pts = [(b, r) for b in range(len(budgets)) for r in mine if r.arm == arm and r.labels_per_class == budgets[b]]
            ax.bar([b + i * width for b, _ in pts], [r.mean for _, r in pts], width, yerr=[r.std for _, r in pts],
                   label=arm, capsize=2)
        ax.set_xticks([b + 0.4 - width / 2 for b in range(len(budgets))], budgets)
        ax.set(title=f"{rows[0].domain}: {protocol}", xlabel="labels per class", ylabel="accuracy", ylim=(0, 1))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "evaluation.png", dpi=100)
    plt.close(fig)
    return out / "evaluation.csv", out / "evaluation.png"


def format_table(rows: list[Row]) -> str:
    """The rows as the text table a benchmark prints."""
    lines = [f"{'protocol':9s} {'labels':>6s} {'arm':12s} {'accuracy':>17s} {'runs':>5s}  gap [95% CI]"]
    for r in rows:
        gap = "" if r.gap is None else f"{r.gap:+.3f} [{r.gap_ci_low:+.3f}, {r.gap_ci_high:+.3f}]"
        lines.append(f"{r.protocol:9s} {r.labels_per_class:>6s} {r.arm:12s} {r.mean:8.3f} +- {r.std:.3f} "
                     f"{r.n_runs:5d}  {gap}")
    return "\n".join(lines)
