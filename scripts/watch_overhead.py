"""What watching costs training: ``twinnet watch`` with a page polling it against
``twinnet train`` of each twin, with the same settings.

    PYTHONPATH=src python scripts/watch_overhead.py                  # mlp128, 3000 steps, 3 rounds
    PYTHONPATH=src python scripts/watch_overhead.py --model cnn --steps 600

Each round runs, one after the other (so that a busy machine slows all three alike):
``twinnet train MODEL --backend numpy``, the same with ``--backend tf`` (their
metrics.json ``train_seconds``: the seconds spent in steps), and ``twinnet watch MODEL
--port 0`` with the same settings while this script behaves as an open page: it polls
``GET /api/run`` every 250 ms, the first layer ``GET /api/run/weights`` every second and
``POST /api/predict`` with a test digit every 1.5 s. Watch's figure is its
``running_seconds``: the wall time of the lockstep loop, step 1 to the last, with
everything it does besides the steps (the drift, the requests it serves). Training the
twins one after the other would take the sum of the two ``train`` figures, so

    cost = 1 - (steps / watch seconds) / (steps / (numpy seconds + tf seconds))

is the share of steps per second that watching loses. Watch's own time beside the
twins' steps (its ``running_seconds`` less each twin's ``seconds``: the drift, the
requests served between steps) is measured within the one run, so it does not depend on
the rounds agreeing. Prints each round, the median of
the rounds' costs, and the cost from the fastest run of each command over the rounds: on
a machine shared with other work, a run is only ever slowed by it, so the fastest runs
are the nearest to the machine's own speed.
Everything runs on 127.0.0.1; nothing leaves this machine. Stop it with Ctrl-C (which
also stops the watch it started).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from twinnet.data import load_mnist  # noqa: E402
from twinnet.watch import watch_config  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))


def settings(config) -> list[str]:
    return ["--steps", str(config.steps), "--optimizer", config.optimizer, "--lr", repr(config.lr),
            "--schedule", config.schedule, "--batch-size", str(config.batch_size), "--seed", str(config.seed),
            "--eval-every", str(config.eval_every)]


def train_seconds(config, backend: str, out: Path) -> float:
    subprocess.run([sys.executable, "-m", "twinnet", "train", config.model, "--backend", backend,
                    *settings(config), "--out", str(out)], env=ENV, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["train_seconds"]


def request(url: str, data: bytes | None = None) -> dict:
    assert url.startswith("http://127.0.0.1:")
    method = "GET" if data is None else "POST"
    ask = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(ask, timeout=60) as response:
        return json.loads(response.read())


def watch_seconds(config, out: Path, digit: bytes, page: bool) -> tuple[float, dict]:
    log = out.with_suffix(".log")
    out.mkdir(parents=True)
    with open(log, "w") as fh:
        process = subprocess.Popen([sys.executable, "-m", "twinnet", "watch", config.model, *settings(config),
                                    "--out", str(out), "--port", "0"], env=ENV, stdout=fh,
                                   stderr=subprocess.DEVNULL)
    try:
        while not (url := next((w for w in log.read_text().split() if w.startswith("http://")), None)):
            assert process.poll() is None, log.read_text()
            time.sleep(0.05)
        while True:
            try:
                run = request(url + "api/run")
                break
            except OSError:
                time.sleep(0.05)
        done = threading.Event()

        def every(seconds: float, action) -> None:
            while not done.is_set():
                try:
                    action()
                except OSError:
                    pass
                done.wait(seconds)
        if page:
            for seconds, action in ((0.25, lambda: request(url + "api/run?points=600")),
                                    (1.0, lambda: request(url + "api/run/weights")),
                                    (1.5, lambda: request(url + "api/predict", digit))):
                threading.Thread(target=every, args=(seconds, action), daemon=True).start()
        while run["state"] != "done":
            time.sleep(0.25)
            run = request(url + "api/run?points=2")
        done.set()
        assert run["error"] is None and run["step"] == config.steps, run
        return run["running_seconds"], run
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp128")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-page", action="store_true", help="watch with no page open")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both twins in all three commands (OpenBLAS's and "
                             "TensorFlow's environment variables); default: as the machine is set up")
    args = parser.parse_args()
    if args.threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                     "TF_NUM_INTEROP_THREADS"):
            ENV[name] = str(args.threads)
    config = watch_config(args.model, steps=args.steps)
    mnist = load_mnist()
    buffer = io.BytesIO()
    Image.fromarray(np.round(mnist.test.x[0, ..., 0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    print(f"{config.model}: {config.steps} steps, {config.optimizer} lr {config.lr:g} {config.schedule}, "
          f"batch {config.batch_size}, validation every {config.eval_every} steps; "
          f"{'no page' if args.no_page else 'a page polling'}; "
          f"{f'{args.threads} thread(s) each' if args.threads else 'default threads'}")
    costs, beside, fastest = [], [], {"numpy": [], "tf": [], "watch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            numpy_s = train_seconds(config, "numpy", Path(tmp) / f"numpy-{k}")
            tf_s = train_seconds(config, "tf", Path(tmp) / f"tf-{k}")
            watch_s, run = watch_seconds(config, Path(tmp) / f"watch-{k}", buffer.getvalue(),
                                         not args.no_page)
            train_rate = config.steps / (numpy_s + tf_s)
            watch_rate = config.steps / watch_s
            costs.append(1 - watch_rate / train_rate)
            for name, seconds in (("numpy", numpy_s), ("tf", tf_s), ("watch", watch_s)):
                fastest[name].append(seconds)
            own = ", ".join(f"{t} {run['history'][t]['seconds']:.2f} s" for t in run["twins"])
            beside.append(1 - sum(run["history"][t]["seconds"] for t in run["twins"]) / watch_s)
            print(f"round {k + 1}: train numpy {numpy_s:.2f} s + tf {tf_s:.2f} s = {train_rate:.0f} steps/s; "
                  f"watch {watch_s:.2f} s = {watch_rate:.0f} steps/s (its twins' own steps: {own}; "
                  f"the rest of its loop {beside[-1]:.1%}); cost {costs[-1]:+.1%}", flush=True)
    print(f"median cost of watching: {statistics.median(costs):+.1%} of train's steps per second "
          f"(rounds: {', '.join(f'{c:+.1%}' for c in costs)})")
    print(f"watch's loop beside the twins' steps (drift, the page's requests): median "
          f"{statistics.median(beside):.1%} of its time")
    numpy_s, tf_s, watch_s = (min(fastest[name]) for name in ("numpy", "tf", "watch"))
    print(f"fastest of each: train numpy {numpy_s:.2f} s + tf {tf_s:.2f} s = "
          f"{config.steps / (numpy_s + tf_s):.0f} steps/s; watch {watch_s:.2f} s = "
          f"{config.steps / watch_s:.0f} steps/s; cost {1 - (numpy_s + tf_s) / watch_s:+.1%}")


if __name__ == "__main__":
    main()
