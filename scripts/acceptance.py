"""Print every figure issue 31 accepts on, in one command (about 10-15 minutes).

    TWINNET_DATA=/path/to/mnist .venv/bin/python scripts/acceptance.py [--quick]

On the machine at hand, for cnn, lenet5, cnn-bn-dropout and the two specs of
scripts/specs/ (strided and valid convs, batch norm, leaky ReLU, tanh, average pooling,
dropout):

1. ``twinnet bench`` step and inference ratios on all cores;
2. the same on one core (``taskset -c 0``, BLAS and TensorFlow on one thread);
3. end to end, ``train_seconds`` of ``twinnet train M --steps 300 --seed 2``, each twin;
4. the same with a busy loop holding one core;
5. a cnn step after a 50 ms pause against one back to back, each twin;
6. the report's NumPy weights evaluated again against their recorded test accuracy.

Run it on a quiet machine: every figure is a ratio of two timings taken in turn, but a
machine that other work loads changes both unevenly. ``--quick`` takes one repeat each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["cnn", "lenet5", "cnn-bn-dropout", str(ROOT / "scripts/specs/newcomer.toml"),
          str(ROOT / "scripts/specs/mix.toml")]
ONE_CORE = {"OPENBLAS_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def run(title: str, command: list[str], env: dict[str, str] | None = None) -> None:
    print(f"\n== {title}\n$ {' '.join(command)}", flush=True)
    subprocess.run(command, env={**os.environ, **(env or {})}, check=False)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    twinnet = [sys.executable, "-m", "twinnet"]
    repeats = ["--repeats", "3" if quick else "7"]
    run("1. bench, all cores", [*twinnet, "bench", "--models", *MODELS, *repeats])
    run("2. bench, one core (taskset -c 0, one BLAS and one TensorFlow thread)",
        ["taskset", "-c", "0", *twinnet, "bench", "--models", *MODELS, *repeats], ONE_CORE)
    end_to_end = [*twinnet, "bench", "--models", *MODELS, "--repeats", "1", "--steps", "1", "--end-to-end"]
    run("3. end to end, quiet (the bench figures above it are a one-repeat warm-up)", end_to_end)
    run("4. end to end, one core held by a busy loop", [*end_to_end, "--busy-core"])
    for backend in ("numpy", "tf"):
        run(f"5. a cnn step after a pause, {backend}",
            [sys.executable, str(ROOT / "scripts/pause_step.py"), "cnn", "--backend", backend])
    run("6. the report's NumPy weights, evaluated again",
        [sys.executable, str(ROOT / "scripts/check_report_weights.py")])


if __name__ == "__main__":
    main()
