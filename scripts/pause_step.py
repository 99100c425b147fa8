"""Time one twin's training step back to back and after a pause of the caller.

    python scripts/pause_step.py cnn [--backend numpy|tf] [--pauses 0,10,50,200] [--reps 40]

Prints, per pause, the median ms of the step that follows it, and its ratio to the
back-to-back step: what an evaluation, a checkpoint or a request to ``serve`` costs
the step after it (issue 31 asks for at most 1.2x after 50 ms).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="cnn")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "tf"))
    parser.add_argument("--pauses", default="0,10,50,200", help="milliseconds, comma-separated")
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    from twinnet.backend import load_model

    model = load_model(args.model, args.backend, seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((100, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 100)
    for _ in range(20):  # warm-up: workers, buffers, tracing
        model.train_step(x, y, 1e-4)
    results = {}
    for pause in (float(p) for p in args.pauses.split(",")):
        times = []
        for _ in range(args.reps):
            if pause:
                time.sleep(pause / 1000)
            else:
                model.train_step(x, y, 1e-4)  # the step before, back to back
            start = time.perf_counter()
            model.train_step(x, y, 1e-4)
            times.append(time.perf_counter() - start)
        results[pause] = statistics.median(times) * 1000
    base = results.get(0.0) or next(iter(results.values()))
    for pause, ms in results.items():
        print(f"{args.model} {args.backend} after {pause:5.0f} ms pause: {ms:6.2f} ms  {ms / base:.2f}x")


if __name__ == "__main__":
    main()
