"""The local engine: thread counts as arguments, bit-identical runs, dead workers retried."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from twinnet.parallel import DIE_ONCE_VARIABLE, WorkerDiedError, retry_or_fail, run_jobs, run_with_threads
from twinnet.presets import load_presets
from twinnet.report import RunJob, generate_report, run_job


@dataclass(frozen=True)
class Probe:
    name: str
    threads: int | None = None


def blas_threads(job: Probe) -> int:
    from threadpoolctl import threadpool_info

    return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")


def test_a_lone_job_gets_the_thread_share_of_its_worker_count() -> None:
    # One job left with two workers still runs with cores // 2 BLAS threads, as it
    # would among others: its float rounding must not depend on what else is trained.
    expected = max(1, (os.cpu_count() or 1) // 2)
    [(job, threads)] = run_jobs(blas_threads, [Probe("a")], workers=2)
    assert job.threads == expected and threads == expected


def test_one_worker_runs_jobs_in_order_in_this_process() -> None:
    results = list(run_jobs(lambda job: (job.name, os.getpid()), [Probe("a"), Probe("b")], workers=1))
    assert [(job.name, result) for job, result in results] == [("a", ("a", os.getpid())),
                                                               ("b", ("b", os.getpid()))]


def test_a_second_death_names_the_run() -> None:
    attempts: dict[int, int] = {}
    retry_or_fail([(0, Probe("P1:a"))], attempts)
    with pytest.raises(WorkerDiedError, match="died again while running P1:a"):
        retry_or_fail([(0, Probe("P1:a"))], attempts)


@pytest.mark.slow
def test_pool_and_in_process_runs_are_bit_identical(tmp_path, mnist_path, presets_file) -> None:
    (preset,) = [p for p in load_presets(presets_file) if p.config.backend == "numpy"]
    job = RunJob(preset, str(tmp_path / "run"), str(mnist_path), False)
    [(pooled_job, pooled)] = run_jobs(run_job, [job], workers=2)
    here = run_with_threads(run_job, RunJob(preset, job.directory, job.data_dir, False,
                                            threads=pooled_job.threads))
    for key in pooled["params"]:
        assert np.array_equal(pooled["params"][key], here["params"][key]), key


@pytest.mark.slow
def test_a_killed_local_worker_is_retried(tmp_path, mnist_path, monkeypatch, capfd, presets_file) -> None:
    marker = tmp_path / "died"
    monkeypatch.setenv(DIE_ONCE_VARIABLE, str(marker))
    out = tmp_path / "report"
    generate_report(out=out, jobs=2, data_dir=mnist_path, presets_path=presets_file)
    err = capfd.readouterr().err
    assert marker.exists(), "no worker was killed"
    # Both jobs may be running when the worker dies: the pool cannot tell which, so it
    # names and reruns all of them.
    assert "a worker died while running P" in err
    assert "running it again" in err or "running them again" in err
    assert "Traceback" not in err and "leaked" not in err
    for preset in load_presets(presets_file):
        assert (preset.run_dir(out) / "metrics.json").is_file()


KILLED_JOB_MODULE = '''
import os
import signal
import sys
from dataclasses import dataclass

from twinnet.parallel import run_jobs
from twinnet.training import progress_bar


@dataclass(frozen=True)
class Job:
    marker: str
    number: int
    threads: int | None = None

    @property
    def name(self):
        return f"job {self.number}"


def work(job):
    with progress_bar(1, "a worker's bar", enabled=False):
        pass
    try:
        os.close(os.open(job.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return 1
    os.kill(os.getpid(), signal.SIGKILL)  # the first job is killed after its bar, as by a user


if __name__ == "__main__":
    jobs = [Job(sys.argv[1], 1), Job(sys.argv[1], 2)]
    print(sum(result for _, result in run_jobs(work, jobs, 2)))
'''


def test_a_killed_worker_leaks_no_semaphore(tmp_path) -> None:
    # Before: "resource_tracker: There appear to be 2 leaked semaphore objects" at exit,
    # the killed workers' tqdm locks.
    import subprocess
    import sys

    (tmp_path / "killed_job.py").write_text(KILLED_JOB_MODULE)
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), src]))
    done = subprocess.run([sys.executable, str(tmp_path / "killed_job.py"), str(tmp_path / "marker")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
    assert "a worker died while running" in done.stderr
    assert "leaked" not in done.stderr, done.stderr
