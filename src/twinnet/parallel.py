"""Run independent jobs (sweep points, report runs) in worker processes.

Each worker gets an equal share of the cores: BLAS and TensorFlow thread pools are
sized through the environment before the workers start, so K jobs on C cores do not
oversubscribe the machine. Workers are spawned, never forked, because a forked
TensorFlow runtime is not safe to use.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS")


@contextmanager
def thread_limits(threads: int) -> Iterator[None]:
    """Set the thread-count variables that child processes read at start-up."""
    saved = {name: os.environ.get(name) for name in (*THREAD_VARIABLES, "TF_NUM_INTEROP_THREADS")}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_jobs(function: Callable[[Job], Result], jobs: list[Job],
             workers: int) -> Iterator[tuple[Job, Result]]:
    """Yield ``(job, function(job))`` for every job in ``jobs``, as each finishes.

    A job is one picklable object (e.g. ``twinnet.report.RunJob``) and ``function`` a
    module-level function of it. With one worker the jobs run here, in order, in this
    process; otherwise in spawned processes with ``cores // workers`` threads each, even
    when fewer jobs than workers remain: a job's thread count, and with it the rounding
    of its results (BLAS splits its sums between threads), then depends only on
    ``workers``, so a run retrained alone matches the same run trained among others bit
    for bit.
    """
    if workers <= 1 or not jobs:
        for job in jobs:
            yield job, function(job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with thread_limits(threads), ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {pool.submit(function, job): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()
