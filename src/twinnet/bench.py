"""``twinnet bench``: training-step and inference speed of both twins, in one process.

Backends are interleaved (each repeat times every backend in turn), so a slow spell of
the machine hurts both alike. Work is counted from the spec, not measured: a dense or
conv layer costs its forward multiply-adds once forward, once for the weight gradient
and once for the input gradient (skipped for the first layer, whose input is the image).
Every result names the CPU model, its SIMD level and the BLAS kernel in use, and the
ceiling it is compared with is measured (a large sgemm), not estimated from flags.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.backend import load_model
from twinnet.environment import cpu_name, simd_level
from twinnet.memory import check_memory, path_of
from twinnet.metrics import predict_logits
from twinnet.models import IMAGE_SHAPE, dropout_masks, has_dropout, model_name, walk

INFERENCE_IMAGES = 10_000
PEAK_MATRIX = 2048


def layer_multiply_adds(model: str) -> list[int]:
    """Forward multiply-adds per image of each dense/conv layer, in order."""
    return [step.multiply_adds for step in walk(model) if step.multiply_adds]


def step_flops(model: str, batch_size: int) -> int:
    """FLOPs of one training step: 2 x multiply-adds of forward, weight gradient and input
    gradient (none for the first layer) over the batch."""
    costs = layer_multiply_adds(model)
    return 2 * batch_size * (3 * sum(costs) - costs[0])


def inference_flops(model: str, images: int) -> int:
    return 2 * images * sum(layer_multiply_adds(model))


def sgemm_peak_gflops(size: int = PEAK_MATRIX, repeats: int = 5) -> float:
    """Measured float32 matmul speed of NumPy's BLAS on all its threads: the best of
    ``repeats`` products of two ``size`` x ``size`` matrices. The ceiling the NumPy twin's
    matmuls can reach here (OPENBLAS_CORETYPE may select narrower kernels than the CPU has)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool, caches
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def blas_info() -> dict[str, Any]:
    """NumPy's BLAS library, its kernel architecture and the thread counts in force."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except (TypeError, KeyError):
        info["numpy_blas"] = "unknown"
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
    info["blas_threads"] = {p["internal_api"]: p["num_threads"] for p in pools}
    info["blas_kernel"] = ", ".join(str(p.get("architecture")) for p in pools) or "unknown"
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS"):
        if os.environ.get(name):
            info[name] = os.environ[name]
    return info


def time_steps(model, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Seconds per training step over ``steps`` steps (tiny rate: speed, not learning)."""
    if has_dropout(model.model_name):  # one set of masks for every step: speed, not learning
        model.set_dropout_masks(dropout_masks(model.model_name, len(x[0]), 0, 0))
    start = time.perf_counter()
    for i in range(steps):
        model.train_step(x[i], y[i], 1e-4)
    return (time.perf_counter() - start) / steps


def run_bench(models: list[str], backends: list[str], batch_size: int = 100, repeats: int = 5,
              steps: int = 30, optimizer: str = "sgd", seed: int = 0,
              reference: bool = False) -> dict[str, Any]:
    """Median and spread of ms per step and per 1,000 inference images, with GFLOP/s; with
    ``reference``, also of the NumPy twin on its reference layers alone (twin "ref")."""
    for name in models:  # every model fits, before the data and the first model are built
        for backend in (*backends, *(("ref",) if reference else ())):
            check_memory(name, batch_size, training=True, optimizer=optimizer,
                         paths=(path_of(backend if backend != "ref" else "numpy", backend == "ref"),))
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(seed)
    x = rng.random((steps, batch_size, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, (steps, batch_size))
    images = rng.random((INFERENCE_IMAGES, *IMAGE_SHAPE), dtype=np.float32)
    results: dict[str, Any] = {"batch_size": batch_size, "repeats": repeats, "steps": steps,
                               "optimizer": optimizer, "models": {}}
    for name in models:
        built = {b: load_model(name, b, seed=seed, optimizer=optimizer) for b in backends}
        if reference:
            built["ref"] = load_model(name, "numpy", seed=seed, optimizer=optimizer, reference=True)
        for model in built.values():  # warm-up: tracing, buffers, caches
            time_steps(model, x, y, min(5, steps))
            predict_logits(model, images[:2000])
        step_s: dict[str, list[float]] = {b: [] for b in built}
        infer_s: dict[str, list[float]] = {b: [] for b in built}
        for _ in range(repeats):
            for backend, model in built.items():
                step_s[backend].append(time_steps(model, x, y, steps))
                start = time.perf_counter()
                predict_logits(model, images)
                infer_s[backend].append(time.perf_counter() - start)
        per_model = {}
        for backend in built:
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
        if "numpy" in per_model and "ref" in per_model:
            per_model["ratio_reference_step"] = per_model["ref"]["step_ms"] / per_model["numpy"]["step_ms"]
        results["models"][model_name(name)] = per_model  # a spec file by its `name`
    results["environment"] = {
        "cpu": cpu_name(), "simd": simd_level(), "platform": platform.platform(),
        "numpy": np.__version__, "load_average": load_average,
        "sgemm_gflop_per_s": sgemm_peak_gflops(), **blas_info(),
    }
    if "tf" in backends:
        import tensorflow as tf

        results["environment"]["tensorflow"] = tf.__version__
        results["environment"]["tf_intra_op_threads"] = (
            tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)")
    return results


def train_seconds(model: str, backend: str, steps: int, seed: int, out: Path,
                  data_dir: str | None = None) -> float:
    """``train_seconds`` of ``twinnet train MODEL --steps STEPS --seed SEED --backend
    BACKEND`` run in a process of its own, its run folder ``out``."""
    command = [sys.executable, "-m", "twinnet", "train", model, "--steps", str(steps), "--seed", str(seed),
               "--backend", backend, "--out", str(out), "--force"]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["train_seconds"]


def time_end_to_end(models: list[str], backends: list[str], steps: int = 300, seed: int = 2,
                    repeats: int = 1, busy_core: bool = False,
                    data_dir: str | None = None) -> dict[str, Any]:
    """What a user waits for: each twin's ``train_seconds`` (the steps and the validation
    points) of ``twinnet train``, twins interleaved, the median of ``repeats``, and the
    NumPy/TensorFlow ratio. With ``busy_core``, a busy loop holds one core meanwhile (as
    a user's browser would)."""
    results: dict[str, Any] = {"steps": steps, "seed": seed, "repeats": repeats, "busy_core": busy_core,
                               "models": {}}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_core else None
    try:
        with tempfile.TemporaryDirectory(prefix="twinnet-e2e-") as tmp:
            for name in models:
                seconds: dict[str, list[float]] = {b: [] for b in backends}
                for _ in range(repeats):
                    for backend in backends:
                        seconds[backend].append(train_seconds(name, backend, steps, seed, Path(tmp) / backend,
                                                              data_dir))
                per_model: dict[str, Any] = {b: {"train_seconds": statistics.median(s), "all": s}
                                             for b, s in seconds.items()}
                if len(seconds) == 2:
                    numpy_s, tf_s = (per_model[b]["train_seconds"] for b in ("numpy", "tf"))
                    per_model["ratio"] = numpy_s / tf_s
                results["models"][model_name(name)] = per_model  # a spec file by its `name`
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    results["environment"] = {"cpu": cpu_name(), "simd": simd_level(), "cpu_count": os.cpu_count()}
    return results


def format_end_to_end(results: dict[str, Any]) -> str:
    """One row per model: each twin's train_seconds and the NumPy/TensorFlow ratio."""
    env = results["environment"]
    lines = [f"end to end: twinnet train MODEL --steps {results['steps']} --seed {results['seed']}, "
             f"train_seconds (median of {results['repeats']})"
             + (", one core held by a busy loop" if results["busy_core"] else "")
             + f"; {env['cpu']}, {env['simd']}, {env['cpu_count']} cores"]
    w = max([9, *(len(name) for name in results["models"])])
    lines.append(f"{'model':<{w}} {'numpy s':>8} {'tf s':>8} {'numpy/tf':>9}")
    for name, m in results["models"].items():
        cells = [f"{m[b]['train_seconds']:>8.2f}" if b in m else f"{'-':>8}" for b in ("numpy", "tf")]
        ratio = f"{m['ratio']:>8.2f}x" if "ratio" in m else f"{'-':>9}"
        lines.append(f"{name:<{w}} {' '.join(cells)} {ratio}")
    return "\n".join(lines)


def format_bench(results: dict[str, Any]) -> str:
    """An aligned table: one row per model and backend, then the NumPy/TF ratios."""
    env = results["environment"]
    lines = [
        f"batch {results['batch_size']}, {results['optimizer']}, median of {results['repeats']} "
        f"repeats x {results['steps']} steps; {env['cpu']}, {env['simd']}, {env['cpu_count']} cores",
        f"NumPy {env['numpy']} with {env['numpy_blas']} ({env['blas_kernel']} kernels), "
        f"BLAS threads: {env['blas_threads']}"
        + (f"; TensorFlow {env['tensorflow']}, intra-op threads: {env['tf_intra_op_threads']}"
           if "tensorflow" in env else ""),
    ]
    if env.get("OPENBLAS_CORETYPE"):
        lines.append(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} picks NumPy's BLAS kernels (some "
                     "machines set it for older OpenBLAS builds); to time NumPy's own choice, run: "
                     "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE twinnet bench ...")
    if env.get("load_average") is not None:
        lines.append(f"load average before the run: {env['load_average']:.2f} "
                     "(above ~0.5 other work was competing for the cores)")
    lines.append(f"NumPy sgemm ceiling (measured, {PEAK_MATRIX}^3 on all BLAS threads): "
                 f"{env['sgemm_gflop_per_s']:.0f} GFLOP/s")
    w = max([9, *(len(name) for name in results["models"])])  # the model column's width
    lines += ["",
              f"{'model':<{w}} {'twin':<6} {'ms/step':>8} {'(min-max)':>15} {'MFLOP/step':>10} "
              f"{'GFLOP/s':>8} {'ms/1k infer':>11} {'GFLOP/s':>8}"]
    for name, per_model in results["models"].items():
        for backend, r in per_model.items():
            if not isinstance(r, dict):
                continue
            spread = f"{r['step_ms_min']:.2f}-{r['step_ms_max']:.2f}"
            lines.append(f"{name:<{w}} {backend:<6} {r['step_ms']:>8.2f} {spread:>15} "
                         f"{r['step_gflops'] * 1000:>10.1f} {r['step_gflop_per_s']:>8.1f} "
                         f"{r['infer_ms_per_1000']:>11.2f} {r['infer_gflop_per_s']:>8.1f}")
    ratios = [(n, m) for n, m in results["models"].items() if "ratio_step" in m]
    if ratios:
        lines += ["", f"{'model':<{w}} {'numpy/tf step':>14} {'numpy/tf inference':>19}"]
        lines += [f"{n:<{w}} {m['ratio_step']:>13.2f}x {m['ratio_infer']:>18.2f}x" for n, m in ratios]
    references = [(n, m) for n, m in results["models"].items() if "ratio_reference_step" in m]
    if references:
        lines += ["", f"{'model':<{w}} {'ref/numpy step':>15}  "
                      "(ref: the reference layers alone, --reference)"]
        lines += [f"{n:<{w}} {m['ratio_reference_step']:>14.2f}x" for n, m in references]
    return "\n".join(lines)


def block_bytes(kind: str, shape_in: tuple[int, ...], shape_out: tuple[int, ...],
                input_grad: bool) -> tuple[int, int]:
    """Bytes of the main arrays one image makes a block read or write, forward and backward
    (float32; masks one byte per element), from the shapes of its layer's input and
    output (for a conv, before pooling), weights not included. An estimate, to tell a
    block that streams memory from one that computes."""
    inp, conv = int(np.prod(shape_in)), int(np.prod(shape_out))
    if kind == "ConvReLUPool":
        h, w, c_in = shape_in
        out = conv // 4  # pooled
        cols = 9 * c_in * h * w
        forward = 4 * (3 * inp + 2 * cols + 2 * conv + out) + conv + out
        backward = 4 * (out + 2 * conv) + conv + out  # the gradient through ReLU and pool
        if input_grad:  # dz's padded im2col matrix D; dx = D @ W_flip, dW from x.T @ D
            backward += 4 * (2 * conv + 2 * 9 * conv + inp) + 4 * (inp + 9 * conv)
        else:  # dW from the forward's kept im2col matrix
            backward += 4 * cols
        return forward, backward
    if kind in ("DenseReLU", "Dense"):
        return 4 * (inp + 2 * conv) + conv, 4 * (inp + 2 * conv + (inp if input_grad else 0)) + conv
    return 0, 0


def time_blocks(model: str, batch_size: int = 50, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """Forward and backward time of each NumPy-twin block on one thread with one BLAS
    thread, for ``batch_size`` images (a thread's share of a step), median of ``repeats``;
    with FLOPs from the spec, estimated bytes (``block_bytes``) and the one-thread sgemm
    ceiling to compare with."""
    from threadpoolctl import threadpool_limits

    from twinnet.models import dropout_masks, init_params
    from twinnet.numpy_nn.losses import softmax_cross_entropy
    from twinnet.numpy_nn.model import NumpyModel

    check_memory(model, batch_size, training=True)
    numpy_model = NumpyModel(model, init_params(model, seed), threads=1)
    numpy_model.set_dropout_masks(dropout_masks(model, batch_size, seed, step=0))
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, batch_size)
    blocks = numpy_model.network.network.layers  # the fused network: blocks and reference layers
    times: dict[str, list[list[float]]] = {"forward": [[] for _ in blocks], "backward": [[] for _ in blocks]}
    with threadpool_limits(limits=1, user_api="blas"):
        ceiling = sgemm_peak_gflops(1024)
        for _ in range(repeats + 2):  # the first two are warm-up
            a = x
            for i, block in enumerate(blocks):
                start = time.perf_counter()
                a = block.forward(a)
                times["forward"][i].append(time.perf_counter() - start)
            _, d = softmax_cross_entropy(a, y)
            for i in reversed(range(len(blocks))):
                start = time.perf_counter()
                d = blocks[i].backward(d)
                times["backward"][i].append(time.perf_counter() - start)
                if d is None:
                    break
    steps = {step.layer.name: step for step in walk(model) if step.multiply_adds}
    rows = []
    for i, block in enumerate(blocks):
        kind, step = type(block).__name__, steps.get(getattr(block, "name", None))
        if step is None:  # Flatten: a reshape, nothing to time
            continue
        input_grad = getattr(block, "needs_input_grad", True)
        fwd_bytes, bwd_bytes = block_bytes(kind, step.inp, step.out, input_grad)
        weights = block.W.nbytes  # read once forward; the gradient written and, for dx, read again
        fwd_bytes, bwd_bytes = fwd_bytes * batch_size + weights, bwd_bytes * batch_size + 2 * weights
        bwd_flops = 2 * step.multiply_adds * (2 if input_grad else 1)
        for phase, flops, nbytes in (("forward", 2 * step.multiply_adds, fwd_bytes),
                                     ("backward", bwd_flops, bwd_bytes)):
            samples = times[phase][i][2:]
            if not samples:
                continue
            seconds = statistics.median(samples)
            rows.append({"block": f"{block.name} ({kind})", "phase": phase, "ms": seconds * 1000,
                         "mflop": flops * batch_size / 1e6, "mbytes": nbytes / 1e6,
                         "gflop_per_s": flops * batch_size / seconds / 1e9,
                         "gbyte_per_s": nbytes / seconds / 1e9})
    return {"model": model_name(model), "batch_size": batch_size, "repeats": repeats, "rows": rows,
            "sgemm_one_thread_gflop_per_s": ceiling,
            "environment": {"cpu": cpu_name(), "simd": simd_level(), **blas_info()}}


def format_blocks(result: dict[str, Any]) -> str:
    """The per-block table of ``time_blocks`` as aligned text."""
    env = result["environment"]
    lines = [f"{result['model']}: NumPy-twin blocks on one thread, batch {result['batch_size']}, "
             f"median of {result['repeats']}; {env['cpu']}, {env['simd']}, "
             f"{env['blas_kernel']} BLAS kernels",
             "one-thread sgemm ceiling (measured, 1024^3): "
             f"{result['sgemm_one_thread_gflop_per_s']:.0f} GFLOP/s",
             ""]
    w = max([len("all blocks"), *(len(row["block"]) for row in result["rows"])])
    lines.append(f"{'block':<{w}} {'phase':<8} {'ms':>7} {'MFLOP':>7} {'GFLOP/s':>8} {'MB (est.)':>9} "
                 f"{'GB/s':>6}")
    for row in result["rows"]:
        lines.append(f"{row['block']:<{w}} {row['phase']:<8} {row['ms']:>7.3f} {row['mflop']:>7.1f} "
                     f"{row['gflop_per_s']:>8.1f} {row['mbytes']:>9.1f} {row['gbyte_per_s']:>6.1f}")
    total = sum(row["ms"] for row in result["rows"])
    lines.append(f"{'all blocks':<{w}} {'':<8} {total:>7.3f}")
    return "\n".join(lines)
