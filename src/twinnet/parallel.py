"""Run independent jobs (sweep points, report runs) on workers: a local process pool or Ray.

A job carries its thread count (``threads``). The worker applies it as an argument: BLAS
through threadpoolctl here, the twins through ``backend.load_model(threads=...)``
(the NumPy twin's threads, TensorFlow's intra-op threads). Nothing travels through
environment variables, so a job gives the same bits on any engine and any machine of
the same kind. Both engines size jobs by one rule, ``cores // workers`` threads, even
when fewer jobs than workers remain: a job's rounding then depends only on
``workers``, and a run retrained alone (``report --only``) matches it bit for bit.

A worker returns its whole result (metrics, and weights for a report run) to the
driver, which writes the files: no shared filesystem is needed. A worker process that
dies (killed, out of memory) is named by its job and the job is retried once; results
that finished are kept.

Local workers are spawned, never forked, because a forked TensorFlow runtime is not safe
to use.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from twinnet.environment import install_command
from twinnet.errors import TwinnetError

ENGINES = ("local", "ray")
# Tests only: the path of a marker file. The first job that creates it kills its own
# worker process (SIGKILL), as a crash would; every later job runs normally.
DIE_ONCE_VARIABLE = "TWINNET_TEST_DIE_ONCE"


class Job(Protocol):
    """What the engines need of a job: a picklable frozen dataclass with these fields."""

    threads: int | None  # None until run_jobs sets the engine's share

    @property
    def name(self) -> str:
        """How messages name the job, e.g. the run label ``P1:a``."""
        ...


J = TypeVar("J", bound=Job)
Result = TypeVar("Result")


class WorkerDiedError(TwinnetError):
    """A worker died twice on the same job."""


def threads_per_job(workers: int) -> int:
    """Each job's thread count: an equal share of this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def die_once_for_tests() -> None:
    """Kill this worker process the first time a job starts with DIE_ONCE_VARIABLE set."""
    marker = os.environ.get(DIE_ONCE_VARIABLE)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def run_with_threads(function: Callable[[J], Result], job: J) -> Result:
    """``function(job)`` with BLAS limited to ``job.threads`` threads while it runs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=job.threads, user_api="blas"):
        return function(job)


def no_process_lock_for_bars() -> None:
    """Keep tqdm from creating its multiprocessing lock in this worker process.

    tqdm makes one (a named POSIX semaphore, registered with multiprocessing's resource
    tracker) the first time a bar is made, and it lives until the process ends. A worker
    that is killed never unregisters it, and the tracker then prints "There appear to be
    N leaked semaphore objects" when the command ends. A worker's bars need only its
    thread lock, which tqdm keeps besides."""
    from tqdm.std import TqdmDefaultWriteLock

    if not hasattr(TqdmDefaultWriteLock, "mp_lock"):
        TqdmDefaultWriteLock.mp_lock = None


def run_in_worker(function: Callable[[J], Result], job: J) -> Result:
    """What a worker process (local or Ray) runs for one job."""
    no_process_lock_for_bars()
    die_once_for_tests()
    return run_with_threads(function, job)


def ignore_sigint() -> None:
    """Local workers leave Ctrl-C to the driver (a job in training still stops cleanly:
    ``train`` installs its own handler while it runs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_jobs(function: Callable[[J], Result], jobs: list[J], workers: int, engine: str = "local",
             address: str | None = None) -> Iterator[tuple[J, Result]]:
    """Yield ``(job, function(job))`` for every job, as each finishes.

    ``function`` is a module-level function of one job (``twinnet.report.run_job``); each
    job is given ``threads_per_job(workers)`` threads unless it names its own. ``local``:
    with one worker the jobs run here, in order; otherwise in ``workers`` spawned
    processes. ``ray``: as Ray tasks of ``threads`` CPUs each, on the cluster at
    ``address`` or on a local one started here. Raises WorkerDiedError when a job's
    worker dies a second time; the jobs yielded before are finished.
    """
    if engine not in ENGINES:
        raise TwinnetError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    jobs = [job if job.threads is not None else replace(job, threads=threads_per_job(workers))
            for job in jobs]
    if not jobs:
        return
    if engine == "ray":
        yield from run_on_ray(function, jobs, address)
    elif workers <= 1:
        for job in jobs:
            yield job, run_with_threads(function, job)
    else:
        yield from run_on_pool(function, jobs, workers)


def retry_or_fail(lost: list[tuple[int, J]], attempts: dict[int, int]) -> None:
    """Count one more attempt for each job (by index) lost with a dead worker; a second
    loss of the same job ends the work. The local pool cannot tell which of its running
    jobs killed it, so all of them count: a job that keeps crashing takes its neighbours'
    retries along, which is named in the message."""
    for index, _ in lost:
        attempts[index] = attempts.get(index, 0) + 1
    names = " or ".join(job.name for _, job in lost)
    if any(attempts[index] > 1 for index, _ in lost):
        raise WorkerDiedError(f"a worker died again while running {names}; results that finished "
                              "are kept")
    print(f"twinnet: a worker died while running {names}; running "
          f"{'it' if len(lost) == 1 else 'them'} again", file=sys.stderr)


def run_on_pool(function: Callable[[J], Result], jobs: list[J], workers: int) -> Iterator[tuple[J, Result]]:
    """The local engine: at most ``workers`` jobs in flight, each on its own process, so a
    broken pool names exactly the jobs that were running. A dead worker breaks the whole
    pool; it is replaced and the lost jobs run again."""
    pending = list(enumerate(jobs))
    attempts: dict[int, int] = {}
    while pending:
        lost: list[tuple[int, J]] = []
        with ProcessPoolExecutor(min(workers, len(pending)), initializer=ignore_sigint,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            running: dict[Future, tuple[int, J]] = {}
            try:
                while (pending or running) and not lost:
                    while pending and len(running) < workers:
                        index, job = pending.pop(0)
                        running[submit_quietly(pool, function, job)] = (index, job)
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        index, job = running.pop(future)
                        try:
                            result = future.result()
                        except BrokenProcessPool:
                            lost.append((index, job))
                            continue
                        yield job, result
            except BaseException:  # Ctrl-C, or the caller stopped: not a job's own failure
                stop_pool(pool)
                raise
            lost += running.values()  # the pool is broken: the others died with it
        if lost:
            lost.sort(key=lambda item: item[0])
            retry_or_fail(lost, attempts)
            pending = lost + pending


def submit_quietly(pool: ProcessPoolExecutor, function: Callable[[J], Result], job: J) -> Future:
    """``pool.submit`` with SIGINT blocked while it runs: a submit may spawn the pool's
    worker processes, and a blocked signal stays blocked in them from their first
    instruction on (the mask survives fork and exec), so a Ctrl-C while a worker is still
    starting cannot print its traceback; the driver handles Ctrl-C (``stop_pool``)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(run_in_worker, function, job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End ``pool`` now: its queued jobs cancelled, its worker processes killed. Leaving
    the ``with`` block would otherwise wait for every running job to finish: a worker
    ignores Ctrl-C outside a training's own handler (``ignore_sigint``), so a job that
    was loading its data when Ctrl-C came then trains to its end, for up to a minute."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public accessor
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # gone already
            pass


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TwinnetError(f"--engine ray needs Ray: {install_command('ray')}") from None
    return ray


# How long joining a Ray cluster may take: the TCP connection to its head, then Ray's own
# connection to the head's GCS (Ray's default would retry for minutes).
RAY_CONNECT_SECONDS = 10
RAY_DEFAULT_PORT = 6379


# What a gRPC server (a Ray head's GCS is one) answers first to an HTTP/2 client: a frame
# whose header's type byte (the fourth) is SETTINGS.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def check_ray_address(address: str, timeout: float = RAY_CONNECT_SECONDS) -> None:
    """TwinnetError naming ``address`` unless a Ray head could be listening there: a TCP
    connection must open within ``timeout`` seconds and the server must answer as a gRPC
    (HTTP/2) server does. Ray itself would retry for minutes and print its own warnings.
    ``HOST:PORT``, ``HOST`` (port 6379) or ``ray://HOST:PORT`` (Ray Client, also gRPC);
    ``auto`` (a cluster started on this machine) is left to Ray."""
    if address == "auto":
        return
    where = address.removeprefix("ray://")
    host, _, port_text = where.rpartition(":") if ":" in where else (where, "", str(RAY_DEFAULT_PORT))
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TwinnetError(f"--address {address}: expected HOST:PORT, e.g. 192.168.1.10:6379")
    hint = "is a Ray head running there (ray start --head)?"
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout) as conn:
            conn.sendall(HTTP2_PREFACE)
            answer = conn.recv(9)
    except TimeoutError:
        raise TwinnetError(f"--address {address}: no answer in {timeout:g} s; {hint}") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise TwinnetError(f"--address {address}: cannot connect ({reason}); {hint}") from None
    if len(answer) < 4 or answer[3] != HTTP2_SETTINGS:
        raise TwinnetError(f"--address {address}: the server there is not a Ray head (it does not "
                           f"answer as Ray's gRPC server does); {hint}")


def start_ray(ray: Any, address: str | None) -> bool:
    """Connect to the cluster at ``address``, or start a local one on 127.0.0.1 with this
    machine's cores and no dashboard; True when this call started or joined it."""
    if ray.is_initialized():
        return False
    # Workers inherit this process's environment (PYTHONPATH, TWINNET_DATA) on a local cluster.
    quiet = {"log_to_driver": False, "configure_logging": False}
    try:
        if address:
            check_ray_address(address)
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise TwinnetError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from None
    return True


def run_on_ray(function: Callable[[J], Result], jobs: list[J],
               address: str | None) -> Iterator[tuple[J, Result]]:
    """The Ray engine: one task of ``job.threads`` CPUs per job; Ray runs as many at once
    as the cluster's CPUs allow. Retries are ours (not Ray's) so that they name the job."""
    ray = import_ray()
    started = start_ray(ray, address)
    try:
        task = ray.remote(max_retries=0)(run_in_worker)
        attempts: dict[int, int] = {}

        def submit(index: int, job: J) -> Any:
            return task.options(num_cpus=job.threads).remote(function, job)

        running = {submit(index, job): (index, job) for index, job in enumerate(jobs)}
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, job = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the job itself failed: its own error
                raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None
            except ray.exceptions.RayError:  # the worker or its node died
                retry_or_fail([(index, job)], attempts)
                running[submit(index, job)] = (index, job)
                continue
            yield job, result
    finally:
        if started:
            ray.shutdown()
