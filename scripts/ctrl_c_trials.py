"""Time how long Ctrl-C takes to end a command, over repeated trials.

    PYTHONPATH=src python scripts/ctrl_c_trials.py train-stopped-worker --trials 10
    PYTHONPATH=src python scripts/ctrl_c_trials.py report --trials 10

``train-stopped-worker``: ``twinnet train cnn`` (the NumPy twin's fast path, its batch
split over worker processes); once it trains, every worker process is stopped (SIGSTOP),
then SIGINT goes to the command's process group, as Ctrl-C in a terminal sends it.
``report``: ``twinnet report`` of two NumPy-twin runs on two workers, into a fresh folder;
SIGINT to the process group after a random 1 to 8 s (``--delay``), landing in any phase
(start-up, data loading, training). Each trial prints the seconds from SIGINT to exit, the exit code
and the last line of stderr; the summary says how many ended within ``--limit`` seconds.
Processes left stopped are killed by their PID. The MNIST folder is ``$TWINNET_DATA``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in map(int, fh.read().split()):
                    found += [child, *children(child)]
        except OSError:
            pass
    return found


def name_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def trial(mode: str, folder: Path, rng: random.Random, delay: tuple[float, float]) -> tuple[float, int, str]:
    """(seconds from SIGINT to exit, exit code, last stderr line) of one trial."""
    if mode == "train-stopped-worker":
        argv = ["train", "cnn", "--steps", "100000", "--out", str(folder / "run")]
    else:
        argv = ["report", "--out", str(folder / "report"), "--only", "P2c,P2d", "--jobs", "2"]
    process = subprocess.Popen([sys.executable, "-m", "twinnet", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    stopped: list[int] = []
    try:
        if mode == "train-stopped-worker":
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the fast path's workers start with the first step
                workers = [p for p in children(process.pid) if "spawn_main" in name_of(p)]
                if workers:
                    break
                time.sleep(0.2)
            time.sleep(2)  # training under way
            stopped = [p for p in children(process.pid) if "spawn_main" in name_of(p)]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(0.5)
        else:
            time.sleep(rng.uniform(*delay))
        family = children(process.pid)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
        seconds = time.monotonic() - sent
    finally:
        # Left-overs hold the stderr pipe open (and a stopped one stays forever): by PID.
        for pid in stopped + children(process.pid) + locals().get("family", []):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        process.wait()
    err = process.stderr.read()
    lines = [line for line in err.splitlines() if line.strip()]
    return seconds, process.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("train-stopped-worker", "report"))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--limit", type=float, default=10.0, help="seconds a Ctrl-C may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, nargs=2, default=(1.0, 8.0), metavar=("MIN", "MAX"),
                        help="report: seconds before the SIGINT, drawn uniformly (default: 1 8)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    times = []
    for k in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="twinnet-ctrl-c-") as folder:
            seconds, code, last = trial(args.mode, Path(folder), rng, tuple(args.delay))
        times.append(seconds)
        print(f"trial {k + 1}: {seconds:.2f} s, exit {code}: {last[:150]}", flush=True)
    within = sum(t <= args.limit for t in times)
    print(f"{args.mode}: {within} of {len(times)} ended within {args.limit:g} s "
          f"(max {max(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s)")


if __name__ == "__main__":
    main()
