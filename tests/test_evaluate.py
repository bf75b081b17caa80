"""The evaluation harness on problems whose answer is known."""
import csv
import time

import numpy as np
import pytest
import torch

from scimae.core.evaluate import (COLUMNS, extract_features, finetune_rows, held_back, label_draws, logistic_predict, mcnemar,
                                  paired_gap, probe_rows, write_evaluation)


def _blobs(n, d, shift, seed):
    """Two classes separated along one direction of a d-dimensional space: [n, d], labels [n]."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.standard_normal((n, d))
    x[:, 0] += shift * (2 * y - 1)
    return x, y


def test_features_that_separate_the_classes_beat_random_ones_and_identical_arms_tie():
    x_tr, y_tr = _blobs(200, 8, 3.0, 0)
    x_va, y_va = _blobs(200, 8, 3.0, 1)
    rng = np.random.default_rng(2)
    noise = [(rng.standard_normal((200, 8)), rng.standard_normal((200, 8))) for _ in range(2)]
    rows = probe_rows("toy", {"pretrained": [(x_tr, x_va)], "random_init": noise, "simple": noise},
                      y_tr, y_va, budgets=[5, None], n_draws=8)
    by = {(r.protocol, r.labels_per_class, r.arm): r for r in rows}
    for protocol in ("knn", "logistic"):
        good, chance = by[(protocol, "5", "pretrained")], by[(protocol, "5", "random_init")]
        assert good.mean > 0.8 and abs(chance.mean - 0.5) < 0.1
        assert good.gap_ci_low > 0.2 and chance.gap is None and chance.n_runs == 16
        same = by[(protocol, "5", "simple")]  # an arm identical to the baseline: a gap of 0, its CI holds 0
        assert same.gap == 0 and same.gap_ci_low <= 0 <= same.gap_ci_high
    assert by[("logistic", "all", "pretrained")].n_runs == 1


def test_label_draws_are_balanced_reproducible_and_differ_by_draw():
    y = np.repeat([0, 1, 2], 30)
    draws = label_draws(y, 5, 4, seed=3)
    assert all(np.bincount(y[d]).tolist() == [5, 5, 5] for d in draws)
    assert all(np.array_equal(a, b) for a, b in zip(draws, label_draws(y, 5, 4, seed=3)))
    assert not np.array_equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="fewer than 40"):
        label_draws(y, 40, 1)


def test_paired_gap_and_mcnemar_match_hand_computed_cases():
    from scipy.stats import binomtest

    gap, low, high = paired_gap(np.array([0.7, 0.8, 0.9, 0.75]), np.array([0.5, 0.55, 0.6, 0.5]))
    assert gap == pytest.approx(0.25) and 0.2 <= low <= gap <= high <= 0.3
    assert paired_gap(np.ones(5), np.ones(5)) == (0.0, 0.0, 0.0)
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)  # 5 items only a gets right, 1 only b gets right
    b = np.array([0, 0, 0, 0, 0, 1, 1, 0, 1, 0], bool)
    assert mcnemar(a, b) == pytest.approx(binomtest(5, 6, 0.5).pvalue) == pytest.approx(14 / 64)
    assert mcnemar(a, a) == 1.0


def test_logistic_probe_chooses_c_on_training_labels_and_handles_one_label_per_class():
    x_tr, y_tr = _blobs(40, 8, 3.0, 4)
    x_va, y_va = _blobs(100, 8, 3.0, 5)
    assert (logistic_predict(x_tr, y_tr, x_va) == y_va).mean() > 0.9
    one = np.array([0, 1])
    assert logistic_predict(x_tr[:2], one, x_va).shape == (100,)


def test_extraction_finetune_rows_and_the_written_files(tmp_path):
    batches = [{"x": torch.randn(4, 3), "y": torch.tensor([0, 1, 0, 1])} for _ in range(3)]
    feats, labels = extract_features(lambda b: b["x"] * 2, batches)
    assert feats.shape == (12, 3) and labels.tolist() == [0, 1, 0, 1] * 3
    y_val = np.arange(50) % 2
    check = ("held-back items", np.array([0, 1]))
    tried = []

    def run(arm, seed, lr, per_class=5, predict=None):
        if predict is not None:  # choosing the rate: 4 of the 5 labels, scored on the held-back ones
            assert (seed, per_class, predict) == (0, 4, check[0])
            tried.append((arm, lr))
            best = 1e-4 if arm == "pretrained" else 1e-3  # scratch does best at 1e-3, pretrained at 1e-4
            return check[1] if lr == best else 1 - check[1]
        assert lr == (1e-4 if arm == "pretrained" else 1e-3)  # each arm fine-tuned at its own choice
        time.sleep(0.02 * (3 - seed))  # run in parallel, later seeds finish first
        if arm == "scratch":
            return np.zeros(50, int)
        return np.where(np.arange(50) < 2 * seed, 1 - y_val, y_val)  # seed s gets 2 s items wrong

    rows, p, chosen = finetune_rows("toy", run, y_val, 5, lrs=(1e-3, 1e-4), check=check)
    assert [r.arm for r in rows] == ["pretrained", "scratch"] and rows[0].gap == pytest.approx(0.46)
    assert p < 1e-6 and chosen == {"pretrained": 1e-4, "scratch": 1e-3} and len(tried) == 4
    assert (rows[0].gap_ci_low, rows[0].gap_ci_high) == (pytest.approx(0.42), pytest.approx(0.5))
    parallel = finetune_rows("toy", run, y_val, 5, lrs=(1e-3, 1e-4), check=check, workers=2)
    assert parallel == (rows, p, chosen)  # the same rows, paired by seed whatever order the runs end in
    assert held_back([0, 1, 0, 0, 1, 0, 1, 1], 3) == [3, 6] and held_back([0, 0, 0, 0, 0, 0, 0], 6) == [4, 5]
    csv_path, png = write_evaluation(rows, tmp_path)
    with csv_path.open() as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == COLUMNS and read[1]["gap"] == "" and read[0]["protocol"] == "finetune"
    assert png.read_bytes().startswith(b"\x89PNG")


def test_encoder_features_pool_each_side_once_in_eval_mode():
    from scimae.core.evaluate import encoder_features

    class Tokens(torch.nn.Module):
        dim = 3

        def forward(self, batch):
            assert not self.training  # features are extracted in eval mode
            return {"tokens": batch["x"], "valid": torch.ones(batch["x"].shape[:2], dtype=torch.bool)}  # [B, N, D]

    x = torch.arange(24.0).reshape(4, 2, 3)
    train = [{"x": x[:2], "y": torch.tensor([0, 1])}, {"x": x[2:], "y": torch.tensor([1, 0])}]
    val = [{"x": x[:1], "y": torch.tensor([1])}]
    x_tr, x_va, y_tr, y_va = encoder_features(Tokens(), train, val, "mean")
    np.testing.assert_allclose(x_tr, x.mean(1).numpy())
    np.testing.assert_allclose(x_va, x[:1].mean(1).numpy())
    assert y_tr.tolist() == [0, 1, 1, 0] and y_va.tolist() == [1]


def test_predict_classes_takes_each_batch_s_argmax_in_evaluation_mode():
    from scimae.core.evaluate import predict_classes

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.9))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    model.train()
    batches = [torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, -1.0]])]
    assert predict_classes(model, batches).tolist() == [0, 1, 0]  # dropout off: the same answer every time
    assert not model.training
