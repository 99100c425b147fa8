"""Time the NumPy twin of two (or more) source trees against each other, interleaved.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python scripts/compare_trees.py /tmp/before/src src --model cnn

Each tree runs in its own Python process (PYTHONPATH=TREE) with the same environment;
the processes take turns, one round each, so that a slow spell of a shared machine hits
every tree alike. A round is --steps training steps (batch 100, SGD) and 3 inference
passes over 1,000 images; the script prints each tree's median over the rounds, ms per
step and ms per 1,000 images, and every round's step time. To time another BLAS kernel
set or thread count, set the environment of this script (e.g. ``env -u
OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import sys, time
import numpy as np
from twinnet.models import init_params
from twinnet.numpy_nn import NumpyModel

model_name, steps = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((100, 28, 28, 1), dtype=np.float32)
y = rng.integers(0, 10, 100)
images = rng.random((1000, 28, 28, 1), dtype=np.float32)
model = NumpyModel(model_name, init_params(model_name, 0))
for _ in range(20):
    model.train_step(x, y, 1e-4)
model.logits(images)
print("ready", flush=True)
for _ in sys.stdin:
    step = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_step(x, y, 1e-4)
        step.append(time.perf_counter() - start)
    infer = []
    for _ in range(3):
        start = time.perf_counter()
        model.logits(images)
        infer.append(time.perf_counter() - start)
    print(np.median(step) * 1e3, np.median(infer) * 1e3, flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="source folders holding twinnet/")
    parser.add_argument("--model", default="cnn", help="model to time (default: cnn)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per tree (default: 12)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per round (default: 40)")
    args = parser.parse_args()
    for tree in args.trees:
        if not (tree / "twinnet" / "__init__.py").is_file():
            parser.error(f"{tree}: no twinnet package here (give the folder that holds twinnet/)")

    workers = {}
    for tree in args.trees:
        env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
        workers[str(tree)] = subprocess.Popen(
            [sys.executable, "-c", WORKER, args.model, str(args.steps)], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for name, worker in workers.items():
        if worker.stdout.readline().strip() != "ready":
            print(f"{name}: the worker failed to start", file=sys.stderr)
            return 1
    steps: dict[str, list[float]] = {name: [] for name in workers}
    infers: dict[str, list[float]] = {name: [] for name in workers}
    for round_ in range(args.rounds):
        for name, worker in workers.items():
            worker.stdin.write("go\n")
            worker.stdin.flush()
            step_ms, infer_ms = map(float, worker.stdout.readline().split())
            steps[name].append(step_ms)
            infers[name].append(infer_ms)
        print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, end="\r")
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()
    width = max(len(name) for name in workers)
    print(f"{args.model}, median of {args.rounds} rounds; ms/step, ms per 1,000 inference images")
    for name in workers:
        rounds = " ".join(f"{t:.2f}" for t in steps[name])
        print(f"{name:<{width}}  step {statistics.median(steps[name]):6.2f}  "
              f"infer {statistics.median(infers[name]):6.2f}   steps: {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
