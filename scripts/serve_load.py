"""Load test of ``twinnet serve``: N clients post one MNIST test digit each, all at once.

    PYTHONPATH=src python scripts/serve_load.py            # starts its own server on 127.0.0.1
    PYTHONPATH=src python scripts/serve_load.py --clients 400 --rounds 3

Starts ``twinnet serve --port 0`` (loopback only), waits until both twins are ready
(or the TensorFlow twin is unavailable), then fires ``--clients`` concurrent POSTs of a
280x280 dark-on-light PNG, the page's size and polarity, ``--rounds`` times. Prints the
status codes, the digits read correctly and the latency percentiles of each round, and
the server's peak memory (VmHWM). Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from twinnet.data import load_mnist

REPO = Path(__file__).resolve().parents[1]


def digit_png(image: np.ndarray) -> bytes:
    """An MNIST image (28, 28, 1) as the page sends it: 280x280, dark ink on white."""
    pixels = 255 - np.round(image[..., 0] * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.kron(pixels, np.ones((10, 10), np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, data: bytes) -> tuple[int, float, int]:
    """(status, seconds, the NumPy twin's digit or -1)."""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "image/png"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
            return response.status, time.perf_counter() - start, answer["twins"]["numpy"]["digit"]
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - start, -1
    except OSError:
        return 0, time.perf_counter() - start, -1  # refused or reset: counted as code 0


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    with open(log, "w") as fh:
        process = subprocess.Popen([sys.executable, "-m", "twinnet", "serve", "--port", "0"],
                                   stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"twinnet serve did not start: {log.read_text()}")
        url = next((w for w in log.read_text().split() if w.startswith("http://127.0.0.1:")), None)
        if url:
            try:
                with urllib.request.urlopen(url + "api/status", timeout=5) as response:
                    if json.loads(response.read())["twins"]["tf"]["status"] != "loading":
                        return process, url
            except OSError:
                pass
        time.sleep(0.2)


def peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log", default="/tmp/twinnet-serve-load.log")
    args = parser.parse_args()
    mnist = load_mnist()
    images = [digit_png(mnist.test.x[i]) for i in range(args.clients)]
    process, url = start_server(Path(args.log))
    try:
        with urllib.request.urlopen(url + "api/status", timeout=5) as response:
            print("twins:", {k: v["status"] for k, v in json.loads(response.read())["twins"].items()})
        for round_ in range(1, args.rounds + 1):
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                results = list(pool.map(lambda data: post(url + "api/predict", data), images))
            seconds = np.array([t for _, t, _ in results]) * 1000
            correct = sum(d == y for (_, _, d), y in zip(results, mnist.test.y, strict=False))
            print(f"round {round_}: {args.clients} clients, codes {dict(Counter(c for c, _, _ in results))}, "
                  f"{correct} read correctly; latency p50 {np.percentile(seconds, 50):.0f} ms, "
                  f"p99 {np.percentile(seconds, 99):.0f} ms, max {seconds.max():.0f} ms")
        print(f"server peak memory (VmHWM): {peak_memory_mb(process.pid):.0f} MB")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
