"""Running untrusted code (a learner's layers) in child processes with a time limit.

Why hand-built on ``multiprocessing.Process`` rather than
``concurrent.futures.ProcessPoolExecutor``: a pool cannot stop a task that is already
running. ``Future.cancel`` fails once a task has started, and a worker stuck in a
learner's endless loop keeps its process (and the pool's shutdown) waiting for ever, so
ending it would mean killing the pool's private worker processes. One process per job,
whose handle we hold, ends with ``kill()`` at its deadline, and a job that dies (a
crash in C code, ``os._exit``) is told apart from one that answered. Each child starts
by ``fork`` where the platform has it (cheap: NumPy and the lesson are already
imported, TensorFlow never is in the parent) and sends one picklable answer back
through a pipe; its stdout and stderr go to /dev/null, so a learner's prints cannot
garble the table.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any


@dataclass
class Outcome:
    """How one job ended: ``status`` "ok" (``value`` is its answer), "error" (``value``
    is a one-line description), "timeout" or "died" (``value`` says how)."""

    status: str
    value: Any = None


def describe_exception(exc: BaseException, learner_file: str | None) -> str:
    """``Type: message (layers.py line 12, in backward: the line)``: the last frame of the
    traceback in ``learner_file``, else the last frame at all."""
    frames = traceback.extract_tb(exc.__traceback__)
    theirs = [f for f in frames if learner_file and os.path.abspath(f.filename) == learner_file]
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f"{text} ({os.path.basename(exc.filename or '')} line {exc.lineno})"
    if theirs:
        frame = theirs[-1]
        where = f"{os.path.basename(frame.filename)} line {frame.lineno}, in {frame.name}"
        return f"{text} ({where}: {frame.line.strip()})" if frame.line else f"{text} ({where})"
    return text


def _child(conn: Any, fn: Callable, args: tuple, learner_file: str | None) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    try:
        answer: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:  # noqa: BLE001 (the learner's code may raise anything)
        answer = ("error", describe_exception(exc, learner_file))
    try:
        conn.send(answer)
    except Exception as exc:  # noqa: BLE001 (an answer that does not pickle)
        conn.send(("error", f"the answer could not be sent back: {describe_exception(exc, None)}"))
    conn.close()


def context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_jobs(jobs: dict[str, tuple[Callable, tuple, float]], workers: int = 2,
             learner_file: str | None = None) -> dict[str, Outcome]:
    """Run ``jobs`` (key -> (function, args, seconds)) each in its own child process, at
    most ``workers`` at a time; each is killed at its time limit. Returns key -> Outcome;
    an exception's description names its line in ``learner_file``."""
    ctx = context()
    pending = list(jobs)
    running: dict[str, tuple[Any, Any, float]] = {}
    outcomes: dict[str, Outcome] = {}
    while pending or running:
        while pending and len(running) < max(1, workers):
            key = pending.pop(0)
            fn, args, seconds = jobs[key]
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(sender, fn, args, learner_file), daemon=True)
            process.start()
            sender.close()
            running[key] = (process, receiver, time.monotonic() + seconds)
        ready = wait([receiver for _, receiver, _ in running.values()], timeout=0.05)
        for key, (process, receiver, deadline) in list(running.items()):
            outcome = None
            if receiver in ready:
                try:
                    outcome = Outcome(*receiver.recv())
                except (EOFError, OSError):
                    process.join(1)
                    outcome = Outcome("died", f"the process ended without an answer "
                                              f"(exit code {process.exitcode})")
            elif time.monotonic() > deadline:
                outcome = Outcome("timeout", f"no answer within {jobs[key][2]:g} s (an endless loop, "
                                             "or a layer too slow: --timeout raises the limit)")
            if outcome is None:
                continue
            if process.is_alive():
                process.kill()
            process.join()
            receiver.close()
            del running[key]
            outcomes[key] = outcome
    return outcomes
