"""Benchmark code runs and measures what it says, at toy size."""
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, load_benchmark as _load


def test_core_step_benchmark_toy():
    bench = _load("core_step")
    w = {"dim": 48, "depth": 2, "heads": 2, "dec_dim": 24, "dec_depth": 1, "dec_heads": 2}
    for spatial, patch in [((32, 32), (8, 8)), ((16, 16, 16), (8, 8, 8))]:
        r = bench.bench(spatial, patch, 2, w, rounds=1)
        assert min(r["core"], r["monai"], r["full"]) > 0
        # the masked encoder sees a quarter of the tokens: fewer FLOPs than the unmasked step, not zero
        assert 0.1 * r["full_flops"] < r["flops"] < 0.8 * r["full_flops"]
        line = bench.report("toy", r)
        assert "faster" in line and "FLOP ratio" in line
        # the ceiling: MONAI's step time over the core's matrix products run alone
        assert 0 < r["core_matmuls"] and r["peak"] > 1e8
        assert f"ceiling {r['monai'] / r['core_matmuls']:.2f}x" in line


def test_matmul_replay_runs_exactly_the_steps_matrix_products():
    bench = _load("core_step")
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)

    def loss_fn(m):
        return m(x).square().sum()

    flops, calls = bench.record_step(model, loss_fn)
    assert all(p.grad is None for p in model.parameters())  # recording leaves no gradients behind
    replay = bench.matmul_replay(calls)
    with FlopCounterMode(display=False) as step:
        loss_fn(model).backward()
    with FlopCounterMode(display=False) as alone:
        replay()
    # an MLP's FLOPs are all in its products: forward addmm, backward mm for inputs and weights
    assert alone.get_total_flops() == step.get_total_flops() == flops > 0


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                                         if "__main__" in p.read_text()))
def test_benchmark_imports(name):
    """Every benchmark script's imports resolve against the current core and domains."""
    assert callable(_load(name).main)


@pytest.mark.slow
def test_skeleton_benchmark_quick_run_writes_the_evaluation(tmp_path):
    import csv
    import subprocess
    import sys

    from scimae.core.evaluate import COLUMNS

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "skeleton.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "files/s from the parse cache" in out.stdout
    with (tmp_path / "evaluation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert {(r["protocol"], r["arm"]) for r in rows} == {
        (p, a) for p in ("knn", "logistic") for a in ("pretrained", "random_init", "simple")} | {
        ("finetune", "pretrained"), ("finetune", "scratch")}
    assert all(0 <= float(r["mean"]) <= 1 for r in rows)
    assert [r["gap"] == "" for r in rows if r["arm"] in ("random_init", "scratch")] == [True] * 5
    assert (tmp_path / "evaluation.png").read_bytes().startswith(b"\x89PNG")
    assert "McNemar p =" in out.stdout and "learning rates chosen on held-back training labels" in out.stdout


def test_compare_gives_the_welch_interval_of_two_runs_difference(tmp_path, capsys):
    from scipy import stats

    compare = _load("compare")
    header = "domain,protocol,labels_per_class,arm,metric,mean,std,n_runs,gap,gap_ci_low,gap_ci_high\n"
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(header + "d,logistic,5,pretrained,accuracy,0.60,0.05,20,,,\nd,logistic,5,random_init,accuracy,0.3,0.1,60,,,\n"
                 "d,logistic,all,pretrained,accuracy,0.9,0.0,1,,,\n")
    b.write_text(header + "d,logistic,5,pretrained,accuracy,0.65,0.04,20,,,\nd,logistic,all,pretrained,accuracy,0.8,0.0,1,,,\n")
    rows_a, rows_b = compare.read(str(a), "pretrained"), compare.read(str(b), "pretrained")
    diff, low, high = compare.welch(rows_a[("logistic", "5")], rows_b[("logistic", "5")])
    assert diff == pytest.approx(0.05) and low < diff < high
    for bound in (low, high):  # at each end of the interval, Welch's test of that difference gives p = 0.05
        p = stats.ttest_ind_from_stats(0.60, 0.05, 20, 0.65 - bound, 0.04, 20, equal_var=False).pvalue
        assert p == pytest.approx(0.05, abs=1e-6)
    sys.argv = ["compare.py", str(a), str(b)]
    compare.main()
    out = capsys.readouterr().out
    assert f"+0.050 [{low:+.3f}, {high:+.3f}]" in out and "-0.100\n" in out  # one run each: the difference alone


def test_synthesis_scores_match_a_hand_computed_case(capsys):
    import numpy as np

    common = _load("common")
    true = np.array([0.0, 1.0, 2.0, 4.0])  # range 4
    row = common.synthesis_row(true, true + np.array([0.1, -0.2, 0.3, -0.4]), np.zeros(4), np.array([1, 2, 3, 4.0]))
    assert row[0] == pytest.approx(10 * np.log10(16 / np.mean([0.01, 0.04, 0.09, 0.16])), rel=1e-5)
    assert row[1] == pytest.approx(10 * np.log10(16 / np.mean([0, 1, 4, 16.0])), rel=1e-5)
    assert row[2] == pytest.approx(1.0)  # the spread ranks the errors exactly
    reversed_row = common.synthesis_row(true, true + np.array([0.1, -0.2, 0.3, -0.4]), np.zeros(4), np.array([4, 3, 2, 1.0]))
    r = common.synthesis_summary("toy", [row, reversed_row], 2)
    assert r["items"] == 2 and r["spearman_per_item"] == pytest.approx(0.0) and r["psnr"] == pytest.approx(row[0])
    assert r["spearman"] == pytest.approx(0.0)  # pooled: the two items' rankings cancel
    assert "toy, 2 held out" in capsys.readouterr().out
