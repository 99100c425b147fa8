"""The benchmark's bookkeeping: FLOPs from the spec, and a tiny run of its table."""

from __future__ import annotations

import pytest

from twinnet.bench import format_bench, run_bench, step_flops


def test_step_flops_count_forward_and_both_gradients():
    # linear: 784 x 10 multiply-adds forward and for dW; no dx for the first layer.
    assert step_flops("linear", 100) == 2 * 100 * 2 * 7840
    # mlp128: dense1 (784x128) has no dx; dense2 (128x10) has all three.
    assert step_flops("mlp128", 1) == 2 * (2 * 784 * 128 + 3 * 128 * 10)


def test_tiny_bench_reports_both_twins_and_ratios():
    pytest.importorskip("tensorflow")
    results = run_bench(["linear"], ["tf", "numpy"], batch_size=10, repeats=1, steps=2)
    per_model = results["models"]["linear"]
    for backend in ("tf", "numpy"):
        assert per_model[backend]["step_ms"] > 0 and per_model[backend]["infer_ms_per_1000"] > 0
    assert per_model["ratio_step"] == pytest.approx(
        per_model["numpy"]["step_ms"] / per_model["tf"]["step_ms"])
    table = format_bench(results)
    assert "numpy/tf step" in table and "linear" in table and results["environment"]["numpy_blas"]
