"""The core step benchmark runs and measures what it says, at toy size."""
import importlib.util

import pytest

from conftest import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        # the ceiling: MONAI's step time over the time of the core's FLOPs at the matmul rate measured alongside
        assert r["peak"] > 1e8
        assert f"ceiling at the matmul peak {r['monai'] / (r['flops'] / r['peak']):.2f}x" in line


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmark_imports(name):
    """Every benchmark's imports resolve against the current core and domains."""
    assert callable(_load(name).main)
