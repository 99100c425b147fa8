"""``FastNetwork``: the fused network, each batch of a model with convolutions cut into
one part per core, the first on the calling thread, the others on workers (``workers.py``)
or, where they cannot run, one after another here; the parts' gradients added in part
order (the same seed, part count and machine give the same bits). Dense-only models
leave the cores to BLAS's own threads."""

from __future__ import annotations

import logging
import math
import os
import weakref
from contextlib import suppress
from functools import cache
from itertools import count
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_info

from twinnet import models
from twinnet.numpy_nn.fast import budgets, workers
from twinnet.numpy_nn.fast.fusion import fuse
from twinnet.numpy_nn.fast.layer_blocks import FastBatchNorm
from twinnet.numpy_nn.network import MAX_EVAL_CHUNK, Network, build_layers
from twinnet.numpy_nn.normalization import Dropout
from twinnet.util import chunk_slices, in_chunks

log = logging.getLogger(__name__)
_keys = count()
_use_processes = True  # False after a worker failed: every part in this process from then on


def blas_threads() -> int:
    """BLAS's thread count now (e.g. 1 in a report worker given one core), else the cores."""
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts, default=os.cpu_count() or 1)


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def fused_network(model: str | tuple, params: dict[str, np.ndarray]) -> Network:
    """The reference layers of ``model`` over ``params``, fused, inferring ``inference_images``."""
    fused = fuse(model, build_layers(model, params))
    itemsize = next(iter(params.values())).dtype.itemsize
    return Network(fused, inference_images(model, fused, itemsize))


def inference_images(model: str | tuple, fused: list, itemsize: int) -> int:
    """Images per inference chunk: ACTIVATION_BYTES over the largest output of a fused layer (a
    block's: its last layer's), at most MAX_EVAL_CHUNK; or BLOCK_ACTIVATION_BYTES over it where no
    activation or batch norm runs alone, every conv block then chunking its own work."""
    shapes, end, largest = models.walk(model), 0, 1
    for layer in fused:
        end += len(getattr(layer, "replaces", (layer,)))
        largest = max(largest, math.prod(shapes[end - 1].out))
    alone = any(hasattr(layer, "in_place") for layer in fused)
    budget = budgets.ACTIVATION_BYTES if alone else budgets.BLOCK_ACTIVATION_BYTES
    return max(1, min(MAX_EVAL_CHUNK, budget // (largest * itemsize)))


# -- what a worker runs (``fn(state, *args)``, see workers.serve) ----------------------

def _take_model(state: dict, key: int, spec: tuple, dtype: str, name: str, index: int,
                rooms: list[int]) -> None:
    shared = workers.SharedArrays(models.param_shapes(spec), np.dtype(dtype), rooms, models.IMAGE_SHAPE, name)
    state[key] = (fused_network(spec, shared.params), shared, index)


def _part_step(state: dict, key: int, n: int, y: np.ndarray, total: int,
               masks: list[np.ndarray | None]) -> tuple[float, int]:
    network, shared, index = state[key]
    _set_part(network, masks, ParentSums(state["parent"], total))
    loss, correct, grads = network.loss_and_grads(shared.inputs[index][:n], y, total)
    for name, g in grads.items():
        shared.grads[index][name][...] = g
    return loss, correct


def _part_logits(state: dict, key: int, start: int, stop: int) -> np.ndarray:
    """The logits of images start:stop of the first worker's room, which every worker reads."""
    network, shared, _ = state[key]
    return network.logits(shared.inputs[0][start:stop])


def _drop_model(state: dict, key: int) -> None:
    entry = state.pop(key, None)
    if entry is not None:
        entry[1].close()


def _forget(owner: tuple[int, int], key: int, taken: list[workers.Worker]) -> None:
    """Tell the workers that took model ``key`` to drop it, if still theirs (``owner``: pid, generation)."""
    if owner != (os.getpid(), workers.generation()):
        return
    for worker in taken:
        with suppress(workers.WorkerError):
            worker.send(_drop_model, key)
            worker.receive(workers.START_SECONDS)


def _set_part(network: Network, masks: list[np.ndarray | None], sums: Any) -> None:
    """A part's rows of the batch's dropout masks, and its batch norms' sums over every
    part (``PartSums``, ``ParentSums``; None for a whole batch)."""
    for layer, mask in zip(_steps(network, Dropout), masks, strict=True):
        layer.mask = mask
    for bn in _steps(network, FastBatchNorm):
        bn.reduce = sums


def _steps(network: Network, kind: type | tuple[type, ...]) -> list:
    """The layers of ``network`` of type ``kind``, those inside fused blocks included."""
    steps = [step for layer in network.layers for step in getattr(layer, "steps", [layer])]
    return [step for step in steps if isinstance(step, kind)]


class PartSums:
    """The sums of a batch norm over a split batch of ``images`` images: this process's
    part's plus each worker's, in part order, handed back to every worker."""

    def __init__(self, images: int, taken: list[workers.Worker]) -> None:
        self.images, self.taken = images, taken

    def __call__(self, sums: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        totals = [s.copy() for s in sums]
        for worker in self.taken:
            for total, part in zip(totals, worker.receive(), strict=True):
                total += part
        for worker in self.taken:
            worker.answer(totals)
        return tuple(totals)


class ParentSums:
    """``PartSums`` as a worker sees it: its part's sums go to the parent, the totals come back."""

    def __init__(self, parent: Any, images: int) -> None:
        self.parent, self.images = parent, images

    def __call__(self, sums: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        self.parent.send(sums)
        return tuple(self.parent.recv())


class FastNetwork:
    """The fast path of model ``model`` over ``params`` (canonical names -> arrays, held by
    reference): ``logits(x)`` and ``loss_and_grads(x, y)`` as ``Network``'s, the same values up to
    the split's rounding; ``threads`` (default: BLAS's thread count) is the most parts of a batch."""

    def __init__(self, model: str, params: dict[str, np.ndarray], threads: int | None = None) -> None:
        workers.keep_freed_memory()  # in this process; a worker does in ``serve``
        self.spec = models.get_spec(model)
        self.params = params
        self.network = fused_network(self.spec, params)
        has_conv = any(isinstance(layer, models.Conv2DSpec) for layer in self.spec)
        self.parts = max(1, threads if threads is not None else blas_threads()) if has_conv else 1
        # Batch norm's statistics and dropout's masks are of the whole batch: workers' parts
        # exchange sums and take mask rows (_set_part); in this process such a step is one part.
        self.whole_batch = bool(_steps(self.network, (FastBatchNorm, Dropout)))
        self._flops = 2 * models.multiply_adds_per_image(self.spec)  # forward, per image
        self.dtype = next(iter(params.values())).dtype
        self._shared: workers.SharedArrays | None = None
        self._owner = (0, 0)  # (pid, worker generation) that _shared was registered with
        self._key = -1

    def _split(self, n: int, flops: float) -> list[slice]:
        """Contiguous parts of range(n), at most one per core, each with MIN_PART_FLOPS of work."""
        parts = int(min(self.parts, max(n, 1), max(1, flops // budgets.MIN_PART_FLOPS)))
        bounds = np.linspace(0, n, parts + 1).astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int, dict[str, np.ndarray]]:
        """Mean loss, number correct and gradients: the parts' (each over the batch) in part order."""
        parts = self._split(len(x), 3 * self._flops * len(x))
        if len(parts) == 1:
            return self.network.loss_and_grads(x, y)
        results = self._run(parts, x, y)
        loss, correct, grads = results[0]
        for part_loss, part_correct, part_grads in results[1:]:
            loss, correct = loss + part_loss, correct + part_correct
            for key, total in grads.items():
                total += part_grads[key]  # in place: the first part's arrays are ours
        return loss, correct, grads

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference logits (N, 10), INPUT_IMAGES images at a time, each cut into pieces
        that the cores take as they come free (``_inference_pieces``)."""
        def chunk_logits(chunk: np.ndarray) -> np.ndarray:
            if len(self._split(len(chunk), self._flops * len(chunk))) == 1:
                return self.network.logits(chunk)
            return np.concatenate(self._run(self._inference_pieces(len(chunk)), chunk, None))

        return in_chunks(chunk_logits, x, budgets.INPUT_IMAGES)

    def _inference_pieces(self, n: int) -> list[slice]:
        """range(n) cut into PIECES_PER_PART pieces per core for each MAX_EVAL_CHUNK images
        (fewer for fewer images), each of at least MIN_PART_FLOPS / PIECES_PER_PART of
        work: the pieces are fixed by n alone, so whoever computes a piece gives the same
        bits, and a core that another program slows takes fewer of them."""
        piece_flops = budgets.MIN_PART_FLOPS / budgets.PIECES_PER_PART
        pieces = budgets.PIECES_PER_PART * self.parts
        least = max(math.ceil(piece_flops / self._flops), math.ceil(min(n, MAX_EVAL_CHUNK) / pieces))
        return chunk_slices(n, least)

    def _run(self, parts: list[slice], x: np.ndarray, y: np.ndarray | None) -> list[Any]:
        """Each part's ``loss_and_grads`` (y given, each divided by len(x)) or ``logits``."""
        with _blas().limit(limits=1, user_api="blas"):
            if _use_processes:
                try:
                    return self._on_workers(parts, x, y)
                except workers.WorkerError as exc:
                    self._give_up_workers(exc)
                except BaseException:  # Ctrl-C: the replies in flight would answer the next request
                    workers.close_workers()
                    raise
            return self._in_this_process(parts, x, y)

    def _in_this_process(self, parts: list[slice], x: np.ndarray, y: np.ndarray | None) -> list[Any]:
        """The parts one after another, as workers compute them (a batch norm or dropout step: one)."""
        if y is None:
            return [self.network.logits(x[piece]) for piece in parts]
        if self.whole_batch:
            return [self.network.loss_and_grads(x, y)]
        return [self.network.loss_and_grads(x[part], y[part], len(x)) for part in parts]

    def _on_workers(self, parts: list[slice], x: np.ndarray, y: np.ndarray | None) -> list[Any]:
        if y is None:
            return self._pieces_on_workers(parts, x)
        taken = self._share(len(parts) - 1, max(p.stop - p.start for p in parts))
        shared = self._shared
        masks = [layer.mask for layer in _steps(self.network, Dropout)]
        rows = [[None if mask is None else mask[part] for mask in masks] for part in parts]
        for index, (worker, part) in enumerate(zip(taken, parts[1:], strict=False)):
            n = part.stop - part.start
            shared.inputs[index][:n] = x[part]
            worker.send(_part_step, self._key, n, y[part], len(x), rows[index + 1])
        try:
            _set_part(self.network, rows[0], PartSums(len(x), taken[:len(parts) - 1]))
            first = self.network.loss_and_grads(x[parts[0]], y[parts[0]], len(x))
        finally:  # the whole batch's again, for a step that reruns in this process
            _set_part(self.network, masks, None)
        replies = [worker.receive() for worker in taken[:len(parts) - 1]]
        return [first, *((*reply, grads) for reply, grads in zip(replies, shared.grads, strict=False))]

    def _pieces_on_workers(self, pieces: list[slice], x: np.ndarray) -> list[np.ndarray]:
        """The logits of each piece of x: the workers take pieces from the front, each with
        its next piece already queued (it never waits for this process to hand one out),
        and this process from the back, until none is left."""
        taken = self._share(self.parts - 1, 0, len(x))
        shared = self._shared
        results: list[Any] = [None] * len(pieces)
        front, back = 0, len(pieces)
        queued: dict[workers.Worker, list[int]] = {worker: [] for worker in taken}

        def hand_out(worker: workers.Worker) -> None:  # its images copied as it goes, not all first
            nonlocal front
            shared.inputs[0][pieces[front]] = x[pieces[front]]
            worker.send(_part_logits, self._key, pieces[front].start, pieces[front].stop)
            queued[worker].append(front)
            front += 1

        for _ in range(2):
            for worker in taken:
                if front < back - 1:  # the last piece is this process's
                    hand_out(worker)
        while front < back:
            back -= 1
            results[back] = self.network.logits(x[pieces[back]])
            for worker, indices in queued.items():
                while indices and worker.conn.poll(0):
                    results[indices.pop(0)] = worker.receive()
                    if front < back:
                        hand_out(worker)
        for worker, indices in queued.items():
            for index in indices:
                results[index] = worker.receive()
        return results

    def _share(self, count: int, images: int, first: int = 0) -> list[workers.Worker]:
        """The workers for ``count`` parts, holding this model, its parameters as they are
        now, in shared memory with room for ``images`` images each and ``first`` in the
        first worker's room (which inference hands out from); registered anew in a new
        process (after os.fork), with new workers, or for more images."""
        shared, here = self._shared, (os.getpid(), workers.generation())
        if shared is not None and self._owner == here:
            if len(shared.inputs[-1]) < images or len(shared.inputs[0]) < first:
                _forget(self._owner, self._key, workers.get_workers(self.parts - 1))
                self._shared = None
        if self._shared is None or self._owner != here:
            self._register(max(images, MAX_EVAL_CHUNK), first)
        for key, p in self.params.items():
            self._shared.params[key][...] = p
        return workers.get_workers(count)

    def _register(self, room: int, first: int) -> None:
        self._shared, taken = None, workers.get_workers(self.parts - 1)
        self._key = next(_keys)
        rooms = [max(room, first, budgets.INPUT_IMAGES), *[room] * (len(taken) - 1)]
        try:
            shared = workers.SharedArrays(models.param_shapes(self.spec), self.dtype, rooms,
                                          models.IMAGE_SHAPE)
        except OSError as exc:  # no room in /dev/shm, or none at all
            raise workers.WorkerError(f"no shared memory for the workers ({exc.strerror or exc})") from None
        try:
            for index, worker in enumerate(taken):
                worker.send(_take_model, self._key, self.spec, self.dtype.str, shared.name, index, rooms)
            for worker in taken:
                worker.receive(workers.START_SECONDS)
        finally:
            shared.shm.unlink()  # mapped by the workers that took it, which is all that is needed
        self._shared, self._owner = shared, (os.getpid(), workers.generation())
        weakref.finalize(self, _forget, self._owner, self._key, taken)

    def _give_up_workers(self, exc: Exception) -> None:
        global _use_processes
        log.warning("NumPy twin: %s; the parts of each batch run in this process from now on", exc)
        _use_processes = False
        workers.close_workers()
