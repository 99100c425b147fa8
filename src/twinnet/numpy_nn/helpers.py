"""Helper processes that run parts of a batch for ``NumpyModel``.

A cnn batch is split into one part per core (``NumpyModel.parts``). The first part runs
on the calling thread; each other part runs in a helper process, which has a GIL of its
own: two threads of one process hand the GIL back and forth between the many short
NumPy calls of a part, and lose time waiting for it (docs/performance.md, "Threads").

A helper is a child Python (``serve(FD)`` of this module) that talks to its parent over
a socket pair with pickled requests and replies. A model's parameters live in a file
that parent and helpers both map into memory, so the optimizer's in-place updates reach
the helpers without copying; each helper writes its part's gradients into its own area
of that file and reads its part's images from another. Helpers start on first use, are
shared by every model of the process, run their BLAS on one thread, and exit when the
parent closes its end.

Only POSIX systems have them (``available()``); elsewhere the parts run on threads.
"""

from __future__ import annotations

import atexit
import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# Shared files go to memory-backed /dev/shm where there is one.
SHARED_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Images a helper's shared input area holds; a larger part goes through the socket.
INPUT_IMAGES = 1000
# Seconds a new helper may take to start and map a model's memory (Python, NumPy, twinnet).
START_SECONDS = 60


class HelperError(RuntimeError):
    """A helper process failed or went away."""


def available() -> bool:
    """Whether helper processes can run here (POSIX: socket pairs, inherited descriptors)."""
    return os.name == "posix" and hasattr(socket, "socketpair")


class SharedArrays:
    """``copies`` sets of arrays of the given shapes and dtype, back to back in one file
    mapped into memory; ``sets[k][name]`` is a C-contiguous view. A model has two: its
    parameters (set 0) with each helper's gradients (set k >= 1, helper k - 1), and each
    helper's input images.

    The file is unlinked once every helper has mapped it (``unlink``); the memory lives
    as long as some process maps it.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: np.dtype, copies: int) -> None:
        dtype = np.dtype(dtype)
        size = sum(math.prod(s) for s in shapes.values()) * copies * dtype.itemsize
        fd, self.path = tempfile.mkstemp(prefix="twinnet-shared-", dir=SHARED_DIR)
        try:
            os.ftruncate(fd, size)
            if hasattr(os, "posix_fallocate"):  # no room fails here, not as SIGBUS later
                os.posix_fallocate(fd, 0, size)
            self.sets = map_sets(fd, dict(shapes), dtype, copies)
        except BaseException:
            self.unlink()
            raise
        finally:
            os.close(fd)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def map_sets(fd: int, shapes: dict[str, tuple[int, ...]], dtype: np.dtype,
             copies: int) -> list[dict[str, np.ndarray]]:
    """The ``copies`` sets of named views into the file open as ``fd`` (see SharedArrays)."""
    set_size = sum(math.prod(s) for s in shapes.values())
    buffer = mmap.mmap(fd, set_size * copies * dtype.itemsize)
    flat = np.frombuffer(buffer, dtype=dtype)
    sets, offset = [], 0
    for _ in range(copies):
        views = {}
        for name, shape in shapes.items():
            size = math.prod(shape)
            views[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        sets.append(views)
    return sets


class Helper:
    """One helper process and the parent's end of its socket."""

    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding twinnet/
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from twinnet.numpy_nn.helpers import serve; "
                 "serve(int(sys.argv[1]))", str(child_end.fileno())],
                pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        self.connection = Connection(parent_end.detach())
        # One request and its reply at a time. Re-entrant: a model's finalizer (a "forget",
        # which has no reply) may run in the middle of a step, on the same thread.
        self.lock = threading.RLock()

    def send(self, message: tuple) -> None:
        try:
            self.connection.send(message)
        except OSError as exc:
            raise HelperError(f"NumPy twin helper process {self.process.pid} is gone ({exc})") from exc

    def receive(self, timeout: float | None = None) -> tuple:
        """The reply to the last request, waiting at most ``timeout`` seconds if given;
        raises HelperError if it failed or did not come."""
        try:
            if timeout is not None and not self.connection.poll(timeout):
                raise HelperError(f"NumPy twin helper process {self.process.pid} did not answer "
                                  f"in {timeout:g} s")
            reply = self.connection.recv()
        except (EOFError, OSError) as exc:
            code = self.process.poll()
            raise HelperError(f"NumPy twin helper process {self.process.pid} exited"
                              + (f" with code {code}" if code is not None else "")) from exc
        if reply[0] == "error":
            raise HelperError(f"NumPy twin helper process {self.process.pid}: {reply[1]}")
        return reply[1:]

    def close(self) -> None:
        self.connection.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


_helpers: list[Helper] = []
_helpers_lock = threading.Lock()
_helpers_pid = os.getpid()


def get_helpers(count: int) -> list[Helper]:
    """``count`` running helpers, starting the missing ones (a forked child starts its own)."""
    global _helpers_pid
    with _helpers_lock:
        if _helpers_pid != os.getpid():
            _helpers.clear()
            _helpers_pid = os.getpid()
        _helpers[:] = [h for h in _helpers if h.process.poll() is None]
        while len(_helpers) < count:
            _helpers.append(Helper())
        return _helpers[:count]


@atexit.register
def close_helpers() -> None:
    """Close every helper (they exit on their own too, when this process does)."""
    with _helpers_lock:
        if _helpers_pid != os.getpid():
            _helpers.clear()
        for helper in _helpers:
            helper.close()
        _helpers.clear()


# -- the helper process ----------------------------------------------------------------


def serve(fd: int) -> None:
    """The helper's loop: answer the parent's requests until it closes the socket.

    Requests: ("model", key, model name, dtype, shapes, params path, inputs path, index)
    registers a model, this helper's gradient set and input area being ``index``;
    ("step", key, x, y, total) -> ("ok", loss, correct), the gradients written to the
    set; ("logits", key, x) -> ("ok", logits); ("forget", key), no reply. x is an array,
    or the number of images the parent put in the input area. A failure replies
    ("error", one line).
    """
    from twinnet.numpy_nn import graph  # here, so that the parent's import stays light

    # Ctrl-C in a terminal reaches the whole process group: the parent handles it (the
    # training loop saves a checkpoint), and the helper ends when the parent closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(fd)
    models: dict[int, tuple[list, dict[str, np.ndarray], np.ndarray]] = {}
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        kind, key, *args = request
        if kind == "forget":
            models.pop(key, None)
            continue
        try:
            reply: tuple[Any, ...]
            if kind == "model":
                name, dtype, shapes, params_path, inputs_path, index = args
                dtype = np.dtype(dtype)
                sets = _open_sets(params_path, shapes, dtype, index + 2)
                inputs = _open_sets(inputs_path, {"x": input_shape()}, dtype, index + 1)[index]["x"]
                models[key] = (graph.build_blocks(name, sets[0]), sets[index + 1], inputs)
                reply = ("ok",)
            elif kind in ("step", "logits"):
                blocks, grads_out, inputs = models[key]
                x, *rest = args
                x = inputs[:x] if isinstance(x, int) else x
                if kind == "logits":
                    reply = ("ok", graph.part_logits(blocks, x))
                else:
                    loss, correct, grads = graph.part_step(blocks, x, *rest)
                    for name, grad in grads.items():
                        grads_out[name][...] = grad
                    reply = ("ok", loss, correct)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:  # noqa: BLE001 (any failure goes back to the parent as one line)
            reply = ("error", f"{type(exc).__name__}: {exc}")
        connection.send(reply)


def input_shape() -> tuple[int, ...]:
    """The shape of a helper's input area: INPUT_IMAGES images."""
    from twinnet.models import IMAGE_SHAPE

    return (INPUT_IMAGES, *IMAGE_SHAPE)


def _open_sets(path: str, shapes: dict[str, tuple[int, ...]], dtype: np.dtype,
               copies: int) -> list[dict[str, np.ndarray]]:
    fd = os.open(path, os.O_RDWR)
    try:
        return map_sets(fd, shapes, dtype, copies)
    finally:
        os.close(fd)

