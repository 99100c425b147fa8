"""Worker processes: a job's thread count depends on the worker count only."""

from __future__ import annotations

import os

from twinnet.parallel import run_jobs


def test_a_lone_job_gets_the_thread_share_of_its_worker_count() -> None:
    # One job left with two workers still runs with cores // 2 BLAS threads, as it
    # would among others: its float rounding must not depend on what else is trained.
    expected = str(max(1, (os.cpu_count() or 1) // 2))
    results = dict(run_jobs(os.getenv, ["OPENBLAS_NUM_THREADS"], workers=2))
    assert results == {"OPENBLAS_NUM_THREADS": expected}


def test_one_worker_runs_jobs_in_order_in_this_process() -> None:
    results = list(run_jobs(lambda job: (job, os.getpid()), ["a", "b"], workers=1))
    assert results == [("a", ("a", os.getpid())), ("b", ("b", os.getpid()))]
