"""Scores agree with the libraries users check them against, through the evaluation hooks that report them."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, roc_auc_score

from scimae.core.tasks import classification_evaluate
from scimae.core.metrics import auroc, classification_scores, concordance_index


class Fixed(torch.nn.Module):
    """A 'model' that returns the outputs stored in each batch."""

    def forward(self, batch):
        return batch["out"]


def test_macro_scores_average_over_every_class_seen_as_scikit_learn_does():
    ref, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])  # class 2 only predicted
    scores = classification_scores(pred, ref, iou=True)
    assert scores["macro_f1"] == pytest.approx(5 / 9) and scores["miou"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ref, pred = rng.integers(0, 6, 200), rng.integers(1, 5, 200)  # classes 0 and 5 never predicted
        scores = classification_scores(torch.from_numpy(pred), torch.from_numpy(ref), iou=True)
        assert scores["accuracy"] == accuracy_score(ref, pred)
        assert scores["macro_f1"] == f1_score(ref, pred, average="macro", zero_division=0)
        assert scores["miou"] == jaccard_score(ref, pred, average="macro", zero_division=0)


def test_classification_hook_matches_scikit_learn_over_batches():
    rng = np.random.default_rng(1)
    logits, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 4, 40)  # class 4 absent
    batches = [{"out": torch.from_numpy(logits[i:i + 16]), "y": torch.from_numpy(y[i:i + 16])} for i in range(0, 40, 16)]
    scores = classification_evaluate(5)(Fixed(), batches)
    pred = logits.argmax(1)
    assert scores == {"accuracy": accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro", zero_division=0)}


def test_segmentation_hook_ignores_unlabelled_pixels_and_matches_scikit_learn():
    from scimae.domains.remote_sensing.finetune import IGNORE, GeoTaskConfig, task_evaluate

    rng = np.random.default_rng(2)
    logits, seg = rng.standard_normal((3, 4, 8, 8)).astype(np.float32), rng.integers(0, 4, (3, 8, 8))
    seg[0, :2] = IGNORE
    seg[1, 0] = 7  # a class outside the model's range is not scored either
    batch = {"out": torch.from_numpy(logits), "seg": torch.from_numpy(seg)}
    scores = task_evaluate(GeoTaskConfig(kind="segmentation"), 4)(Fixed(), [batch])
    keep = seg < 4
    pred, ref = logits.argmax(1)[keep], seg[keep]
    assert scores["miou"] == jaccard_score(ref, pred, average="macro", zero_division=0)
    assert scores["macro_f1"] == f1_score(ref, pred, average="macro", zero_division=0)
    assert scores["accuracy"] == accuracy_score(ref, pred)


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.random(50), 1)  # many tied scores
    assert auroc(torch.from_numpy(s), torch.from_numpy(y)) == roc_auc_score(y, s)
    probs = torch.softmax(torch.randn(60, 3), 1)
    labels = torch.arange(60) % 3
    assert auroc(probs, labels) == pytest.approx(roc_auc_score(labels.numpy(), probs.numpy(), multi_class="ovr"))
    assert np.isnan(auroc(torch.rand(5), torch.ones(5)))


def test_concordance_index_follows_scikit_survival():
    sksurv = pytest.importorskip("sksurv.metrics")
    # an event and a censoring at the same time form a pair; equal risks count one half
    assert concordance_index(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([1, 0])) == 0.5
    assert concordance_index(torch.tensor([0.7, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([1, 0])) == 1.0
    # hand count: comparable (i observed, t_i < t_j): (0,1),(0,2),(0,3),(2,1),(2,3),(3,1) -> 1,1,1,1,0.5,1
    assert concordance_index(torch.tensor([0.9, 0.1, 0.5, 0.5]), torch.tensor([1.0, 4.0, 2.0, 3.0]),
                             torch.tensor([1, 0, 1, 1])) == pytest.approx(5.5 / 6)
    rng = np.random.default_rng(4)
    for _ in range(20):
        time, event = rng.integers(1, 8, 40).astype(float), rng.random(40) < 0.6  # many tied times
        risk = np.round(rng.random(40), 1)
        expected = sksurv.concordance_index_censored(event, time, risk)[0]
        assert concordance_index(torch.from_numpy(risk), torch.from_numpy(time), torch.from_numpy(event)) == expected
    with pytest.raises(ValueError, match="censored"):
        concordance_index(torch.rand(4), torch.arange(4.0), torch.zeros(4))
    with pytest.raises(ValueError, match="comparable pairs"):  # the only event is the last time
        concordance_index(torch.rand(4), torch.arange(4.0), torch.tensor([0, 0, 0, 1]))


def test_brain_hooks_match_scikit_survival_and_monai():
    from monai.metrics import compute_dice

    from scimae.core.tasks import survival_risk
    from scimae.domains.brain_mri.finetune import TaskConfig, task_evaluate

    sksurv = pytest.importorskip("sksurv.metrics")
    rng = np.random.default_rng(5)
    logits = torch.from_numpy(rng.standard_normal((30, 4)).astype(np.float32))
    time, event = torch.from_numpy(rng.integers(1, 6, 30).astype(np.float32)), torch.from_numpy(rng.random(30) < 0.7)
    scores = task_evaluate(TaskConfig(kind="survival"))(Fixed(), [{"out": logits, "time": time, "event": event}])
    assert scores["c_index"] == sksurv.concordance_index_censored(event.numpy(), time.numpy().astype(float),
                                                                   survival_risk(logits).double().numpy())[0]
    out = torch.randn(2, 3, 8, 8, 8)
    seg = (torch.rand(2, 3, 8, 8, 8) > 0.6).float()
    seg[1, 2] = 0  # an empty region in one case
    scores = task_evaluate(TaskConfig(kind="segmentation"))(Fixed(), [{"out": out, "seg": seg}])
    dice = compute_dice((out.sigmoid() > 0.5).float(), seg, include_background=True, ignore_empty=False).mean(0)
    assert [scores["dice_tc"], scores["dice_wt"], scores["dice_et"]] == pytest.approx(dice.tolist())
