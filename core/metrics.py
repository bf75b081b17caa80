"""Evaluation metrics as calls into scikit-learn, scikit-survival and MONAI, so every score a run reports
is the one those libraries give on the same labels."""
from __future__ import annotations

import numpy as np
import torch
from scimae.core.errors import require


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def classification_scores(pred, ref, ignore_index: int | None = None, iou: bool = False) -> dict[str, float]:
    """Accuracy and macro-F1 (and, with ``iou``, mean IoU) of class predictions against references, both [N]
    (pixels flattened for segmentation); references equal to ``ignore_index`` are left out. Macro averages
    run over the classes that occur in the references or the predictions, as scikit-learn's do."""
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score

    pred, ref = _np(pred).reshape(-1), _np(ref).reshape(-1)
    if ignore_index is not None:
        keep = ref != ignore_index
        pred, ref = pred[keep], ref[keep]
    if ref.size == 0:
        raise ValueError("no labelled samples to score")
    scores = {"accuracy": float(accuracy_score(ref, pred)),
              "macro_f1": float(f1_score(ref, pred, average="macro", zero_division=0.0))}
    if iou:
        scores["miou"] = float(jaccard_score(ref, pred, average="macro", zero_division=0.0))
    return scores


def auroc(scores, ref) -> float:
    """Area under the ROC curve: ``scores`` [N] against binary ``ref`` [N], or class probabilities [N, C]
    against class indices [N] (one-vs-rest, macro over classes). NaN when ``ref`` holds one class only."""
    from sklearn.metrics import roc_auc_score

    scores, ref = _np(scores).astype(np.float64), _np(ref)
    if len(np.unique(ref)) < 2:
        return float("nan")
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    if scores.ndim == 1:
        return float(roc_auc_score(ref, scores))
    return float(roc_auc_score(ref, scores, multi_class="ovr", average="macro", labels=np.arange(scores.shape[1])))


def concordance_index(risk, time, event) -> float:
    """Harrell's C-index as scikit-survival computes it (higher risk = earlier event; ties in risk count
    one half; an event and a censoring at the same time are a comparable pair)."""
    require("survival metrics", "mri", "sksurv")
    from sksurv.metrics import concordance_index_censored

    event = _np(event).astype(bool).reshape(-1)
    return float(concordance_index_censored(event, _np(time).astype(np.float64).reshape(-1),
                                            _np(risk).astype(np.float64).reshape(-1))[0])
