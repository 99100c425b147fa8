"""Worker processes that run parts of a batch (``serve``: requests ``fn(state, *args)`` from a
``multiprocessing.Pipe``), a model's parameters, gradients and images in one ``shared_memory``
block (``SharedArrays``). Why hand-built (not ``Pool``), started by ``subprocess`` (not as
``Process``), and the malloc settings: docs/performance.md, "What stayed hand-built"."""

from __future__ import annotations

import atexit
import ctypes
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from multiprocessing import Pipe, connection, resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np

# Seconds a worker may take to start and take a model, and to answer one request: past
# them it counts as hung (a stopped process never answers) and the parts run in this process.
START_SECONDS, REPLY_SECONDS = 60, 60
# A worker spins after a request (polling its pipe, yielding its core) for up to SPIN_SECONDS
# before it blocks, so that a request after a short pause finds it on its core (docs/performance.md,
# "A step after a pause"); it blocks at once after a yield over YIELD_SECONDS (a program wants the core).
SPIN_SECONDS, YIELD_SECONDS = 0.2, 0.0005
# What a worker runs (with -P: nothing from the working directory): the request loop on its
# end of the pipe, descriptor argv[1].
START = ("import sys; from multiprocessing.connection import Connection; "
         "from twinnet.numpy_nn.fast.workers import serve; serve(Connection(int(sys.argv[1])))")


class WorkerError(RuntimeError):
    """A worker failed, went away or did not answer in time."""


def serve(conn: connection.Connection) -> None:
    """A worker's loop: each ``(fn, args)`` received runs as ``fn(state, *args)``, its result sent
    back (a WorkerError, the exception in one line, if it raised), until the parent's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    keep_freed_memory()
    state: dict[Any, Any] = {"parent": conn}  # for a request that exchanges with the parent mid-way
    while True:
        _spin(conn)
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = fn(state, *args)
        except Exception as exc:  # noqa: BLE001 (sent to the parent, which decides)
            reply = WorkerError(f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:  # the parent is gone
            return


def keep_freed_memory() -> None:
    """Have glibc's malloc keep a step's arrays in its heap (``mallopt``): by default it follows
    the largest array freed so far, and hands a step's arrays fresh pages from the system again
    and again, a page fault every 4 KB (docs/performance.md, "Chunks and work arrays"). Elsewhere, nothing."""
    if sys.platform == "linux" and hasattr(libc := ctypes.CDLL(None), "mallopt"):
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays up to 32 MB (glibc's most) from the heap
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: up to 64 MB freed at its top stays there


def _spin(conn: connection.Connection) -> None:
    """Return when ``conn`` has a message, after SPIN_SECONDS, or at a yield over YIELD_SECONDS."""
    start = last = time.monotonic()
    while not conn.poll(0) and last - start < SPIN_SECONDS:
        os.sched_yield()
        last, before = time.monotonic(), last
        if last - before > YIELD_SECONDS:
            return


def _import_path() -> str:
    """A worker's PYTHONPATH: the folder this twinnet came from (a notebook's, say), then the caller's."""
    package_root = Path(__file__).resolve().parents[3]
    return os.pathsep.join(filter(None, (str(package_root), os.environ.get("PYTHONPATH"))))


class Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self) -> None:
        self.conn, child = Pipe()
        command = [sys.executable, "-P", "-c", START, str(child.fileno())]
        self.process = subprocess.Popen(command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                        env={**os.environ, "PYTHONPATH": _import_path()})
        child.close()

    def send(self, fn: Callable, *args: Any) -> None:
        """Ask for ``fn(state, *args)``."""
        self.answer((fn, args))

    def answer(self, message: Any) -> None:
        """Send ``message``: a request (``send``), or what one waits for (``state["parent"].recv()``)."""
        try:
            self.conn.send(message)
        except OSError as exc:
            raise WorkerError(f"worker {self.process.pid} is gone ({exc})") from None

    def receive(self, timeout: float | None = None) -> Any:
        """The reply to the last request; WorkerError if the worker failed, died or did
        not answer within ``timeout`` seconds (default REPLY_SECONDS, read at each call)."""
        timeout = REPLY_SECONDS if timeout is None else timeout
        if not self.conn.poll(timeout):  # a worker that exits closes its end: poll sees that
            raise WorkerError(f"worker {self.process.pid} did not answer within {timeout:g} s")
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerError(f"worker {self.process.pid} exited with code {self.process.wait()}") from None
        if isinstance(reply, WorkerError):
            raise WorkerError(f"worker {self.process.pid} failed: {reply}")
        return reply

    def close(self) -> None:
        """Close the pipe (the worker exits) and make sure the process is gone."""
        self.conn.close()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()  # a stopped or hung worker
            self.process.wait(timeout=5)


_workers: list[Worker] = []
_lock = threading.Lock()
_generation = 0  # counts close_workers(): state registered with older workers is gone


def generation() -> int:
    """How many times the workers were closed: a model registered at another count registers again."""
    return _generation


def get_workers(count: int) -> list[Worker]:
    """``count`` running workers, started as needed, shared by every model of this process."""
    with _lock:
        while len(_workers) < count:
            _workers.append(Worker())
        return _workers[:count]


def close_workers() -> None:
    """Stop every worker (after a failure or an interrupted request, whose replies would
    otherwise answer the next one); the next ``get_workers`` starts new ones."""
    global _generation
    with _lock:
        stopping = list(_workers)
        _workers.clear()
        _generation += 1
    for worker in stopping:
        worker.close()


def _forget_workers_in_child() -> None:
    """After os.fork, in the child: drop the parent's workers without a word to them, closing
    only this child's copies of the pipes (their handles, collected, see the processes are not its)."""
    global _lock
    for worker in _workers:
        worker.conn.close()
    _workers.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers_in_child)
atexit.register(close_workers)  # the pipes close, the workers exit, and are waited for


class SharedArrays:
    """One shared-memory block, named ``name``: a model's parameters (``params[key]``), and for
    worker k its gradients (``grads[k][key]``, same shapes) and a room for ``rooms[k]`` input
    images (``inputs[k]``, (images, *image_shape)), all C-contiguous views of ``dtype``."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: np.dtype, rooms: list[int],
                 image_shape: tuple[int, ...], name: str | None = None) -> None:
        sizes = {key: math.prod(s) for key, s in shapes.items()}
        count, per_image, per_set = len(rooms), math.prod(image_shape), sum(sizes.values())
        total = (per_set * (1 + count) + sum(rooms) * per_image) * dtype.itemsize
        self.shm = shared_memory.SharedMemory(name=name, create=name is None, size=max(total, 1))
        if name is None:
            self._reserve(max(total, 1))
        else:  # attached: its maker unlinks it, so this process's resource tracker must forget it
            resource_tracker.unregister(f"/{self.shm.name}", "shared_memory")
        flat = np.ndarray(total // dtype.itemsize, dtype=dtype, buffer=self.shm.buf)

        def views(start: int) -> dict[str, np.ndarray]:
            out = {}
            for key, shape in shapes.items():
                out[key] = flat[start:start + sizes[key]].reshape(shape)
                start += sizes[key]
            return out

        self.params = views(0)
        self.grads = [views(per_set * (1 + k)) for k in range(count)]
        starts = per_set * (1 + count) + per_image * np.cumsum([0, *rooms])
        self.inputs = [flat[a:b].reshape(-1, *image_shape) for a, b in zip(starts, starts[1:], strict=False)]
        self.name = self.shm.name

    def _reserve(self, size: int) -> None:
        """Take the block's memory now: SharedMemory only sets the file's size, and a file
        in a full /dev/shm would then fail at its first write with SIGBUS, which kills the
        process, rather than with an OSError here (the parts then run in this process)."""
        path = os.path.join("/dev/shm", self.shm.name.lstrip("/"))  # where Linux keeps the block
        if not hasattr(os, "posix_fallocate") or not os.path.exists(path):
            return  # nothing to reserve with: another system
        try:
            with open(path, "r+b") as block:
                os.posix_fallocate(block.fileno(), 0, size)
        except OSError:
            self.shm.close()
            self.shm.unlink()
            raise

    def close(self) -> None:
        """Unmap the block (views must no longer be used)."""
        self.params, self.grads, self.inputs = {}, [], []
        with suppress(BufferError):  # a view still alive: the mapping goes with the process
            self.shm.close()

