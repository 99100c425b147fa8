"""The benchmark's bookkeeping: FLOPs from the spec, and a tiny run of its table."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_reference_bench_times_the_reference_layers_against_the_fast_path():
    results = run_bench(["cnn"], ["numpy"], batch_size=8, repeats=1, steps=2, reference=True)
    per_model = results["models"]["cnn"]
    assert per_model["ref"]["step_ms"] > 0
    assert per_model["ratio_reference_step"] == pytest.approx(
        per_model["ref"]["step_ms"] / per_model["numpy"]["step_ms"])
    assert "ref/numpy step" in format_bench(results)


def test_every_timing_names_the_cpu_and_its_simd_level():
    from twinnet.environment import cpu_name, simd_level

    results = run_bench(["linear"], ["numpy"], batch_size=10, repeats=1, steps=2)
    table = format_bench(results)
    assert cpu_name() in table and simd_level() in table
    assert results["environment"]["sgemm_gflop_per_s"] > 0
    assert "kernels" in table  # the BLAS kernel architecture in use


def test_a_pinned_blas_kernel_is_named_with_how_to_lift_it(monkeypatch: pytest.MonkeyPatch):
    results = run_bench(["linear"], ["numpy"], batch_size=10, repeats=1, steps=2)
    results["environment"].pop("OPENBLAS_CORETYPE", None)
    assert "OPENBLAS_CORETYPE=" not in format_bench(results)
    results["environment"]["OPENBLAS_CORETYPE"] = "Haswell"
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE twinnet bench" in format_bench(results)


def test_block_timings_cover_every_parameter_block_with_its_flops():
    from twinnet.bench import format_blocks, time_blocks

    result = time_blocks("cnn", batch_size=4, repeats=1)
    rows = {(row["block"], row["phase"]): row for row in result["rows"]}
    assert set(rows) == {(f"{name} ({kind})", phase)
                         for name, kind in [("conv1", "ConvReLUPool"), ("conv2", "ConvReLUPool"),
                                            ("dense1", "DenseReLU"), ("dense2", "Dense")]
                         for phase in ("forward", "backward")}
    # conv2: 14 x 14 outputs x 9 taps x 16 x 16 channels, twice (multiply and add), 4 images;
    # its backward also computes the input gradient, conv1's does not.
    mflop = {key: row["mflop"] for key, row in rows.items()}
    conv1, conv2 = "conv1 (ConvReLUPool)", "conv2 (ConvReLUPool)"
    assert mflop[conv2, "forward"] == 2 * 4 * 14 * 14 * 9 * 16 * 16 / 1e6
    assert mflop[conv2, "backward"] == 2 * mflop[conv2, "forward"]
    assert mflop[conv1, "backward"] == mflop[conv1, "forward"]
    assert all(row["ms"] > 0 and row["mbytes"] > 0 for row in rows.values())
    assert "conv2 (ConvReLUPool)" in format_blocks(result)


def test_block_timings_run_a_dropout_model_and_fit_long_block_names():
    from twinnet.bench import format_blocks, time_blocks

    result = time_blocks("cnn-bn-dropout", batch_size=4, repeats=1)  # dropout trains on its masks
    blocks = {row["block"] for row in result["rows"]}
    assert blocks == {"conv1 (ConvActPool)", "conv2 (ConvActPool)",
                      "dense1 (DenseReLU)", "dense2 (Dense)"}
    table = format_blocks(result).splitlines()[3:]
    assert len({line.index(" forward") if " forward" in line else line.index(" backward")
                for line in table[1:-1]}) == 1  # one column for the phase, after the longest name


@pytest.mark.slow
def test_end_to_end_times_what_train_records_and_stops_its_busy_loop(mnist_path):
    from twinnet.bench import format_end_to_end, time_end_to_end
    from twinnet.environment import cpu_name, simd_level

    results = time_end_to_end(["linear"], ["numpy"], steps=4, data_dir=str(mnist_path), busy_core=True)
    run = results["models"]["linear"]["numpy"]
    assert run["train_seconds"] > 0 and run["all"] == [run["train_seconds"]]
    assert "ratio" not in results["models"]["linear"]  # one twin: nothing to compare
    table = format_end_to_end(results)
    assert "busy loop" in table and cpu_name() in table and simd_level() in table
    assert not [pid for pid in Path("/proc").glob("[0-9]*") if _busy_loop_child(pid)]


def _busy_loop_child(proc: Path) -> bool:
    """Whether /proc/PID is a busy loop this process started (and has not reaped)."""
    try:
        return (b"while True: pass" in (proc / "cmdline").read_bytes()
                and f"PPid:\t{os.getpid()}\n" in (proc / "status").read_text())
    except OSError:  # gone meanwhile
        return False


def test_end_to_end_flags_need_end_to_end(capsys):
    from twinnet.cli import main

    assert main(["bench", "--busy-core"]) == 2
    assert "--busy-core and --data-dir go with --end-to-end" in capsys.readouterr().err
