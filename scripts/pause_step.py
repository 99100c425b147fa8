"""Time one twin's training step back to back and after a pause of the caller.

    python scripts/pause_step.py cnn [--backend numpy|tf] [--pauses 0,10,50,200] [--reps 40]
                                     [--wait sleep|spin]

Prints, per pause, the median ms of the step that follows it, and its ratio to the
back-to-back step: what an evaluation, a checkpoint or a request to ``serve`` costs
the step after it (issue 31 asks for at most 1.2x after 50 ms).

The same pauses are then timed for a yardstick that is no model at all: three in-place
passes of NumPy over 16 MB (more than a core's L2 cache, as a cnn step's arrays are).
What the yardstick pays after a pause is what this machine costs any program that stops
working for that long. ``--wait spin`` pauses by busy-waiting instead of sleeping: the core never idles
and nothing is touched, so a cost that remains is the host's (other guests or programs
evicting the caches), not the sleep's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def spin(seconds: float) -> None:
    """Busy-wait ``seconds``, touching no memory."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def after_pauses(work: Callable[[], object], pauses: list[float], reps: int,
                 wait: Callable[[float], None]) -> dict[float, float]:
    """Median ms of ``work()`` after each pause (ms), 0 meaning right after another ``work()``."""
    results = {}
    for pause in pauses:
        times = []
        for _ in range(reps):
            if pause:
                wait(pause / 1000)
            else:
                work()  # the call before, back to back
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        results[pause] = statistics.median(times) * 1000
    return results


def show(label: str, results: dict[float, float]) -> None:
    base = results.get(0.0) or next(iter(results.values()))
    for pause, ms in results.items():
        print(f"{label} after {pause:5.0f} ms pause: {ms:6.2f} ms  {ms / base:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="cnn")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "tf"))
    parser.add_argument("--pauses", default="0,10,50,200", help="milliseconds, comma-separated")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--wait", default="sleep", choices=("sleep", "spin"),
                        help="how the caller pauses: sleep (default) or busy-wait")
    args = parser.parse_args()
    from twinnet.backend import load_model

    model = load_model(args.model, args.backend, seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((100, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 100)
    for _ in range(20):  # warm-up: workers, buffers, tracing
        model.train_step(x, y, 1e-4)
    pauses = [float(p) for p in args.pauses.split(",")]
    wait = time.sleep if args.wait == "sleep" else spin
    show(f"{args.model} {args.backend}", after_pauses(lambda: model.train_step(x, y, 1e-4), pauses,
                                                      args.reps, wait))
    data = np.ones(4 << 20, dtype=np.float32)

    def passes() -> None:
        for _ in range(3):
            np.add(data, 1, out=data)

    show("yardstick (3 passes over 16 MB)", after_pauses(passes, pauses, args.reps, wait))
    print(f"(the caller paused by {'sleeping' if args.wait == 'sleep' else 'busy-waiting'})")


if __name__ == "__main__":
    main()
