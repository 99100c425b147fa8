"""``twinnet bench``: training-step and inference speed of both twins, in one process.

Backends are interleaved (each repeat times every backend in turn), so a slow spell of
the machine hurts both alike. Work is counted from the spec, not measured: a dense or
conv layer costs its forward multiply-adds once forward, once for the weight gradient
and once for the input gradient (skipped for the first layer, whose input is the image).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from twinnet.backend import load_model
from twinnet.environment import cpu_name
from twinnet.metrics import predict_logits
from twinnet.models import IMAGE_SHAPE, Conv2D, Dense, MaxPool2D, get_spec

INFERENCE_IMAGES = 10_000


def layer_multiply_adds(model: str) -> list[int]:
    """Forward multiply-adds per image of each dense/conv layer, in order."""
    height, width = IMAGE_SHAPE[:2]
    costs = []
    for layer in get_spec(model):
        if isinstance(layer, Dense):
            costs.append(layer.n_in * layer.n_out)
        elif isinstance(layer, Conv2D):
            costs.append(height * width * layer.size**2 * layer.c_in * layer.c_out)
        elif isinstance(layer, MaxPool2D):
            height, width = height // layer.size, width // layer.size
    return costs


def step_flops(model: str, batch_size: int) -> int:
    """FLOPs of one training step: 2 x multiply-adds of forward, weight gradient and input
    gradient (none for the first layer) over the batch."""
    costs = layer_multiply_adds(model)
    return 2 * batch_size * (3 * sum(costs) - costs[0])


def inference_flops(model: str, images: int) -> int:
    return 2 * images * sum(layer_multiply_adds(model))


def cpu_peak_gflops() -> float | None:
    """Float32 peak of all cores from /proc/cpuinfo: cores x GHz x FLOPs per cycle
    (two FMA units: 32 with AVX2+FMA, 64 with AVX-512). A ceiling, not a promise."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return None
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    if not mhz:
        return None
    per_cycle = 64 if " avx512f" in flags else 32 if " fma" in flags and " avx2" in flags else 8
    return (os.cpu_count() or 1) * statistics.median(mhz) / 1000 * per_cycle


def blas_info() -> dict[str, Any]:
    """NumPy's BLAS library and the thread counts in force."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except (TypeError, KeyError):
        info["numpy_blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info

        info["blas_threads"] = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    except ImportError:
        info["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default (all cores)")
    for name in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS"):
        if os.environ.get(name):
            info[name] = os.environ[name]
    return info


def time_steps(model, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Seconds per training step over ``steps`` steps (tiny rate: speed, not learning)."""
    start = time.perf_counter()
    for i in range(steps):
        model.train_step(x[i], y[i], 1e-4)
    return (time.perf_counter() - start) / steps


def run_bench(models: list[str], backends: list[str], batch_size: int = 100, repeats: int = 5,
              steps: int = 30, optimizer: str = "sgd", seed: int = 0) -> dict[str, Any]:
    """Median and spread of ms per step and per 1,000 inference images, with GFLOP/s."""
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(seed)
    x = rng.random((steps, batch_size, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, (steps, batch_size))
    images = rng.random((INFERENCE_IMAGES, *IMAGE_SHAPE), dtype=np.float32)
    results: dict[str, Any] = {"batch_size": batch_size, "repeats": repeats, "steps": steps,
                               "optimizer": optimizer, "models": {}}
    for name in models:
        built = {b: load_model(name, b, seed=seed, optimizer=optimizer) for b in backends}
        for model in built.values():  # warm-up: tracing, buffers, caches
            time_steps(model, x, y, min(5, steps))
            predict_logits(model, images[:2000])
        step_s: dict[str, list[float]] = {b: [] for b in backends}
        infer_s: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(repeats):
            for backend, model in built.items():
                step_s[backend].append(time_steps(model, x, y, steps))
                start = time.perf_counter()
                predict_logits(model, images)
                infer_s[backend].append(time.perf_counter() - start)
        per_model = {}
        for backend in backends:
            step_ms = statistics.median(step_s[backend]) * 1000
            infer_ms = statistics.median(infer_s[backend]) * 1000 * 1000 / INFERENCE_IMAGES
            per_model[backend] = {
                "step_ms": step_ms,
                "step_ms_min": min(step_s[backend]) * 1000,
                "step_ms_max": max(step_s[backend]) * 1000,
                "infer_ms_per_1000": infer_ms,
                "step_gflops": step_flops(name, batch_size) / 1e9,
                "step_gflop_per_s": step_flops(name, batch_size) / (step_ms / 1000) / 1e9,
                "infer_gflop_per_s": inference_flops(name, 1000) / (infer_ms / 1000) / 1e9,
            }
        if "numpy" in per_model and "tf" in per_model:
            per_model["ratio_step"] = per_model["numpy"]["step_ms"] / per_model["tf"]["step_ms"]
            per_model["ratio_infer"] = (per_model["numpy"]["infer_ms_per_1000"]
                                        / per_model["tf"]["infer_ms_per_1000"])
        results["models"][name] = per_model
    results["environment"] = {
        "cpu": cpu_name(), "platform": platform.platform(), "numpy": np.__version__,
        "load_average": load_average,
        "peak_gflop_per_s": cpu_peak_gflops(), **blas_info(),
    }
    if "tf" in backends:
        import tensorflow as tf

        results["environment"]["tensorflow"] = tf.__version__
        results["environment"]["tf_intra_op_threads"] = (
            tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)")
    return results


def format_bench(results: dict[str, Any]) -> str:
    """An aligned table: one row per model and backend, then the NumPy/TF ratios."""
    env = results["environment"]
    lines = [
        f"batch {results['batch_size']}, {results['optimizer']}, median of {results['repeats']} "
        f"repeats x {results['steps']} steps; {env['cpu']}, {env['cpu_count']} cores",
        f"NumPy {env['numpy']} with {env['numpy_blas']}, BLAS threads: {env['blas_threads']}"
        + (f"; TensorFlow {env['tensorflow']}, intra-op threads: {env['tf_intra_op_threads']}"
           if "tensorflow" in env else ""),
    ]
    if env.get("load_average") is not None:
        lines.append(f"load average before the run: {env['load_average']:.2f} "
                     "(above ~0.5 other work was competing for the cores)")
    if env.get("peak_gflop_per_s"):
        lines.append(f"CPU float32 peak (estimate): {env['peak_gflop_per_s']:.0f} GFLOP/s")
    lines += ["",
              f"{'model':<9} {'twin':<6} {'ms/step':>8} {'(min-max)':>15} {'MFLOP/step':>10} "
              f"{'GFLOP/s':>8} {'ms/1k infer':>11} {'GFLOP/s':>8}"]
    for name, per_model in results["models"].items():
        for backend, r in per_model.items():
            if not isinstance(r, dict):
                continue
            spread = f"{r['step_ms_min']:.2f}-{r['step_ms_max']:.2f}"
            lines.append(f"{name:<9} {backend:<6} {r['step_ms']:>8.2f} {spread:>15} "
                         f"{r['step_gflops'] * 1000:>10.1f} {r['step_gflop_per_s']:>8.1f} "
                         f"{r['infer_ms_per_1000']:>11.2f} {r['infer_gflop_per_s']:>8.1f}")
    ratios = [(n, m) for n, m in results["models"].items() if "ratio_step" in m]
    if ratios:
        lines += ["", f"{'model':<9} {'numpy/tf step':>14} {'numpy/tf inference':>19}"]
        lines += [f"{n:<9} {m['ratio_step']:>13.2f}x {m['ratio_infer']:>18.2f}x" for n, m in ratios]
    return "\n".join(lines)
