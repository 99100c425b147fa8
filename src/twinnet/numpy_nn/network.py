"""``NumpyModel``: one of the four models on the NumPy twin (the Backend protocol).

The network is one list of blocks (``graph.py``) built from the model's spec. Training
and inference run the same list; inference passes ``train=False``. Both use every core:
the cnn's batch is split into one contiguous part per core, the first run on the calling
thread and the others in helper processes (``helpers.py``; threads where there are
none), each with single-threaded BLAS, and the parts' gradients are added in a fixed
order, so the same seed, thread count and machine give the same bits; the dense models
leave the cores to BLAS's own threads.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import cache

import numpy as np

from twinnet import models
from twinnet.numpy_nn import helpers
from twinnet.numpy_nn.blocks import Block, ConvReLUPool
from twinnet.numpy_nn.graph import build_blocks, part_logits, part_step
from twinnet.numpy_nn.optimizers import make_optimizer
from twinnet.weights import check_params

# Splitting a batch into parts pays where the blocks do much work outside BLAS (im2col
# copies, pooling, masks: the conv blocks), which BLAS's own threads leave on one core;
# for dense-only models BLAS's threads do nearly all the work and a split only adds
# hand-offs (docs/performance.md, "Threads"). And a part gets a core of its own only
# with at least MIN_PART_FLOPS of matmul work (about a millisecond's), so a few images
# run on the calling thread.
MIN_PART_FLOPS = 100e6


def _forget(workers: list[helpers.Helper], key: int) -> None:
    """Tell the helpers that a model is gone (they drop its blocks and shared memory)."""
    for worker in workers:
        try:
            with worker.lock:
                worker.send(("forget", key))
        except helpers.HelperError:
            pass


def _receive_or_error(worker: helpers.Helper) -> tuple | Exception:
    try:
        return worker.receive()
    except helpers.HelperError as exc:
        return exc


@cache
def _thread_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="twinnet-numpy")


@cache
def _blas_controller():  # noqa: ANN202 (a threadpoolctl.ThreadpoolController)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside: our own threads split the work instead."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def blas_threads() -> int:
    """BLAS's thread count now (e.g. 1 in a report worker given one core), else the cores."""
    from threadpoolctl import threadpool_info

    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts, default=os.cpu_count() or 1)


_model_keys = itertools.count()
log = logging.getLogger(__name__)


class NumpyModel:
    """Model ``model_name`` trained by hand-derived backpropagation in NumPy.

    Shapes: x (N, 28, 28, 1) NHWC with pixels in [0, 1], cast to ``dtype``; y (N,)
    integer labels; logits (N, 10). ``params`` maps canonical names (``dense1/W`` ...)
    to arrays of the shapes in ``twinnet.models.param_shapes``. ``dtype`` is float32 for
    training and float64 for gradient checks. ``threads`` (default: BLAS's thread count)
    is how many parts a batch of the cnn is split into (``parts``: the first runs on the
    calling thread, the others in helper processes; the dense-only models leave the cores
    to BLAS); results depend on it only by rounding. One call at a time per model.
    """

    backend = "numpy"

    def __init__(self, model_name: str, params: dict[str, np.ndarray], optimizer: str = "sgd",
                 dtype: type[np.floating] | np.dtype = np.float32, threads: int | None = None) -> None:
        self.model_name = model_name
        self.optimizer = optimizer
        self.dtype = np.dtype(dtype)
        check_params(model_name, params, dtype=None)
        self._params = {k: np.array(params[k], dtype=self.dtype) for k in models.param_shapes(model_name)}
        self._opt = make_optimizer(optimizer)
        self.threads = max(1, threads if threads is not None else blas_threads())
        self._flops_per_image = 2 * models.multiply_adds_per_image(model_name)  # forward
        self.blocks = build_blocks(model_name, self._params)
        self.parts = self.threads if any(isinstance(b, ConvReLUPool) for b in self.blocks) else 1
        self._key = next(_model_keys)
        self._helpers: list[helpers.Helper] | None = None  # set on the first split batch
        self._helpers_pid = os.getpid()
        self._replicas: list[list[Block]] | None = None  # blocks per thread, without helpers

    # -- parameters ---------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, canonical names -> arrays of ``self.dtype``."""
        return {k: p.copy() for k, p in self._params.items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace all parameters (copied into the existing arrays, cast to ``self.dtype``)."""
        check_params(self.model_name, params, dtype=None)
        for key, p in self._params.items():
            np.copyto(p, params[key], casting="unsafe")

    # -- running the parts of a batch on every core -------------------------------

    def _parts(self, n: int, flops: float) -> list[slice]:
        """Contiguous parts of range(n) images, one per core: ``flops`` is the matmul work
        of the n images, and a part gets a core of its own only with MIN_PART_FLOPS of it
        (with one part, BLAS's own threads use the cores)."""
        count = int(min(self.parts, max(n, 1), max(1, flops // MIN_PART_FLOPS)))
        bounds = np.linspace(0, n, count + 1).astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _start_helpers(self) -> list[helpers.Helper] | None:
        """The helper processes for parts 1.., started and given this model's parameters
        on first use (the parameters move into memory the helpers share); None where
        there are none, after a failure, or in a forked child: the parts then run on
        threads of this process."""
        if self._helpers is not None and self._helpers_pid == os.getpid():
            return self._helpers
        if self._replicas is None and self._helpers is None and helpers.available():
            try:
                self._helpers = self._share_with(helpers.get_helpers(self.parts - 1))
                self._helpers_pid = os.getpid()
                return self._helpers
            except (OSError, helpers.HelperError) as exc:
                log.warning("NumPy twin: no helper processes (%s); the parts run on threads", exc)
        self._use_threads()
        return None

    def _use_threads(self) -> None:
        """From now on the parts run on threads: one list of blocks per thread (the first
        is ``self.blocks``), each keeping the caches of its own part."""
        self._helpers = None
        if self._replicas is None:
            self._replicas = [self.blocks, *(build_blocks(self.model_name, self._params)
                                             for _ in range(self.parts - 1))]

    def _share_with(self, workers: list[helpers.Helper]) -> list[helpers.Helper]:
        shapes = models.param_shapes(self.model_name)
        shared = helpers.SharedArrays(shapes, self.dtype, copies=len(workers) + 1)
        inputs = helpers.SharedArrays({"x": helpers.input_shape()}, self.dtype, copies=len(workers))
        try:
            for key, p in self._params.items():
                shared.sets[0][key][...] = p
            for index, worker in enumerate(workers):
                with worker.lock:
                    worker.send(("model", self._key, self.model_name, self.dtype.str, shapes,
                                 shared.path, inputs.path, index))
                    worker.receive(timeout=helpers.START_SECONDS)
        except helpers.HelperError:
            _forget(workers, self._key)  # the helpers that did take the model let it go
            raise
        finally:
            shared.unlink()
            inputs.unlink()
        self._params = shared.sets[0]
        self.blocks = build_blocks(self.model_name, self._params)
        self._helper_grads = shared.sets[1:]
        self._helper_inputs = [s["x"] for s in inputs.sets]
        weakref.finalize(self, _forget, workers, self._key)
        return workers

    def _helper_x(self, index: int, x: np.ndarray) -> np.ndarray | int:
        """x for helper ``index``: copied into its input area (the count is sent), or the
        array itself if larger than the area."""
        area = self._helper_inputs[index]
        if len(x) > len(area):
            return x
        area[:len(x)] = x
        return len(x)

    def _run_parts(self, kind: str, x: np.ndarray, y: np.ndarray | None, flops: float) -> list:
        """``part_step`` (kind "step") or ``part_logits`` ("logits") on every part of x;
        the results in part order (a helper's gradients are views of its shared area)."""
        parts = self._parts(len(x), flops)
        run = part_step if kind == "step" else part_logits
        args = [(x[p], y[p], len(x)) if kind == "step" else (x[p],) for p in parts]
        if len(parts) == 1:
            return [run(self.blocks, *args[0])]
        with one_blas_thread():
            workers = self._start_helpers()
            if workers is not None:
                try:
                    return self._on_helpers(workers[:len(parts) - 1], kind, run, args)
                except helpers.HelperError as exc:
                    log.warning("NumPy twin: %s; the parts run on threads from now on", exc)
                    self._use_threads()
            futures = [_thread_pool(self.parts - 1).submit(run, blocks, *a)
                       for blocks, a in zip(self._replicas[1:], args[1:], strict=False)]
            try:
                first = run(self._replicas[0], *args[0])
            finally:
                wait(futures)
            return [first, *(f.result() for f in futures)]

    def _on_helpers(self, workers: list[helpers.Helper], kind: str, run: Callable, args: list) -> list:
        """Parts 1.. sent to the helpers, part 0 run here meanwhile, then the replies."""
        sent: list[helpers.Helper] = []
        for worker in workers:
            worker.lock.acquire()
        try:
            try:
                for index, (worker, (x_part, *rest)) in enumerate(zip(workers, args[1:], strict=True)):
                    worker.send((kind, self._key, self._helper_x(index, x_part), *rest))
                    sent.append(worker)
                first = run(self.blocks, *args[0])
            finally:
                replies = [_receive_or_error(worker) for worker in sent]
        finally:
            for worker in workers:
                worker.lock.release()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if kind == "step":  # (loss, correct) from the reply, the gradients from shared memory
            return [first, *((*reply, g) for reply, g in zip(replies, self._helper_grads, strict=False))]
        return [first, *(reply[0] for reply in replies)]

    def _inputs(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 3:  # (N, 28, 28) without the channel axis
            x = x[..., None]
        return x, None if y is None else np.asarray(y).astype(np.intp, copy=False)

    def _loss_correct_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int, dict[str, np.ndarray]]:
        """Mean loss, number correct and gradients of the whole batch: the sums of its
        parts' (each part divides by the whole batch's size), added in part order."""
        x, y = self._inputs(x, y)
        results = self._run_parts("step", x, y, 3 * self._flops_per_image * len(x))
        grads = {key: results[0][2][key] for key in self._params}  # canonical order
        for _, _, part_grads in results[1:]:
            for key, total in grads.items():
                total += part_grads[key]  # in place: the first part's arrays are ours
        return sum(r[0] for r in results), sum(r[1] for r in results), grads

    # -- the Backend protocol -----------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference forward pass: x (N, 28, 28, 1) -> logits (N, 10) of ``self.dtype``;
        the same values as the training forward."""
        x, _ = self._inputs(x)
        if len(x) == 0:
            return np.zeros((0, models.NUM_CLASSES), dtype=self.dtype)
        return np.concatenate(self._run_parts("logits", x, None, self._flops_per_image * len(x)))

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy of the batch and d(loss)/d(param) for every parameter.

        x (N, 28, 28, 1), y (N,) -> (loss, {canonical name: gradient of the param's shape}).
        """
        loss, _, grads = self._loss_correct_grads(x, y)
        return loss, grads

    def apply(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One optimizer update with learning rate ``lr`` (Keras semantics), in place."""
        self._opt.step(self._params, {k: np.asarray(grads[k], dtype=self.dtype) for k in self._params}, lr)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        """One forward, one backward, one update; returns (mean loss, number correct) of the
        batch, both measured before the update."""
        loss, correct, grads = self._loss_correct_grads(x, y)
        self._opt.step(self._params, grads, lr)
        return loss, correct

    # -- optimizer state ----------------------------------------------------------

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's slots: for Adam ``<param>/m``, ``<param>/v``, ``iterations``;
        only ``iterations`` for SGD."""
        return self._opt.state_dict()

    def load_optimizer_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state_dict`` returned (slots cast to ``self.dtype``)."""
        shapes = models.param_shapes(self.model_name)
        state = dict(state)
        for key, arr in state.items():
            if key == "iterations":
                continue
            param = key.rsplit("/", 1)[0]
            if param not in shapes or np.shape(arr) != shapes[param]:
                raise ValueError(f"optimizer state {key!r} does not match model {self.model_name}")
            state[key] = np.asarray(arr, dtype=self.dtype)
        self._opt.load_state_dict(state)
