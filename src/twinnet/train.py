"""One training loop for both twins.

The loop only talks to a ``Backend`` (see ``twinnet.backend``): it draws the
mini-batches, asks the backend for a training step, records curves and evaluates.
Both twins therefore see the very same batches in the very same order for a seed.
Writing the run folder is ``twinnet.runs``'s job; saving a checkpoint is
``twinnet.checkpoint``'s, from the plain ``state_dict()`` of each part of the loop.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.backend import Backend, load_model
from twinnet.checkpoint import read_checkpoint, save_checkpoint
from twinnet.config import TrainConfig
from twinnet.data import Mnist, Split
from twinnet.environment import environment
from twinnet.errors import TwinnetError
from twinnet.metrics import evaluate
from twinnet.models import DESCRIPTIONS
from twinnet.weights import check_params

__all__ = ["BatchOrder", "DivergenceError", "TrainConfig", "TrainingInterruptedError",
           "learning_rate", "train"]  # TrainConfig lives in twinnet.config; here for callers' ease

SPLITS = ("train", "validation", "test")
# A batch's mean cross-entropy above this means the true digits get probability below
# e^-100 on average. A learning run starts near ln(10) = 2.3 and never comes close; a
# diverged one rarely becomes NaN, because softmax cross-entropy computed from logits
# stays finite while the weights run off, so this bound is what catches it.
DIVERGED_LOSS = 100.0


class DivergenceError(TwinnetError):
    """The training loss became NaN, infinite, or larger than DIVERGED_LOSS."""

    exit_code = 3


class TrainingInterruptedError(TwinnetError):
    """Ctrl-C during training: the run stopped after a whole step, checkpoint saved."""

    exit_code = 130


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate for update number ``step`` (0-based); one schedule for both twins.

    ``constant``: lr throughout. ``cosine``: lr * (1 + cos(pi * step / steps)) / 2,
    falling smoothly from lr to almost 0 at the last step.
    """
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
    return config.lr


class BatchOrder:
    """Endless mini-batches of indices into ``n`` training items, reshuffled every pass.

    A pass is a fresh permutation; the last ``n % batch_size`` items of a pass are
    left for the next shuffle, so every batch is full.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size > n:
            raise TwinnetError(f"--batch-size {batch_size} exceeds the {n} training images")
        self.n, self.batch_size = n, batch_size
        # A stream of its own, so data order does not depend on how parameters were drawn.
        self.rng = np.random.default_rng([seed, 1])
        self.perm = self.rng.permutation(n)
        self.position = 0

    def next(self) -> np.ndarray:
        """Indices (batch_size,) of the next batch."""
        if self.position + self.batch_size > self.n:
            self.perm = self.rng.permutation(self.n)
            self.position = 0
        batch = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``perm`` (n,) int64, ``position`` and the generator's state ``rng`` (JSON-able)."""
        return {"perm": self.perm, "position": self.position, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the order that gave ``state_dict()`` was."""
        self.perm = np.asarray(state["perm"])
        self.position = int(state["position"])
        self.rng.bit_generator.state = state["rng"]


@dataclass
class Curves:
    """Points recorded every ``eval_every`` steps; training figures are means over the
    batches since the previous point, validation figures cover the whole split."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


@dataclass
class RunningSums:
    """The training batches since the last curve point."""

    loss: float = 0.0  # sum of the batches' mean losses
    correct: int = 0
    images: int = 0
    batches: int = 0

    def add(self, loss: float, correct: int, images: int) -> None:
        self.loss += loss
        self.correct += correct
        self.images += images
        self.batches += 1


@dataclass
class TrainingState:
    """What the loop changes as it goes: the model, the data order, the curves so far."""

    model: Backend
    order: BatchOrder
    curves: Curves = field(default_factory=Curves)
    sums: RunningSums = field(default_factory=RunningSums)
    step: int = 0  # updates finished

    def state_dict(self) -> dict[str, Any]:
        """Sections of plain arrays and JSON-able values, as ``twinnet.checkpoint`` stores them."""
        return {"step": self.step, "params": self.model.params,
                "optimizer": self.model.optimizer_state_dict(), "order": self.order.state_dict(),
                "progress": {"curves": asdict(self.curves), "sums": asdict(self.sums)}}

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        check_params(self.model.model_name, state["params"], source)
        self.model.set_params(state["params"])
        self.model.load_optimizer_state_dict(state["optimizer"])
        self.order.load_state_dict(state["order"])
        self.curves = Curves(**state["progress"]["curves"])
        self.sums = RunningSums(**state["progress"]["sums"])
        self.step = state["step"]

    def record_point(self, validation: Split) -> dict[str, float]:
        """Close the current curve point: training means since the last one, validation now."""
        val = evaluate(self.model, validation.x, validation.y)
        point = {"train_loss": self.sums.loss / self.sums.batches,
                 "train_accuracy": self.sums.correct / self.sums.images,
                 "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        self.curves.step.append(self.step)
        for key, value in point.items():
            getattr(self.curves, key).append(value)
        self.sums = RunningSums()
        return point


def start_training(config: TrainConfig, n_train: int, checkpoint: str | os.PathLike | None = None,
                   threads: int | None = None) -> TrainingState:
    """A fresh state for ``config``, or the one saved in ``checkpoint`` when given;
    ``threads`` as in ``backend.load_model``."""
    model = load_model(config.model, config.backend, seed=config.seed, optimizer=config.optimizer,
                       threads=threads)
    state = TrainingState(model, BatchOrder(n_train, config.batch_size, config.seed))
    if checkpoint is not None:
        state.load_state_dict(read_checkpoint(checkpoint), str(checkpoint))
    return state


def save_training(path: str | os.PathLike, config: TrainConfig, state: TrainingState) -> None:
    save_checkpoint(path, {"config": asdict(config), **state.state_dict()})


def check_loss(loss: float, step: int, lr: float, backend: str) -> None:
    """DivergenceError, naming the step, rate and backend, unless the loss is a sane number."""
    if not loss <= DIVERGED_LOSS:  # also true for NaN
        raise DivergenceError(f"training diverged at step {step}: loss is {loss} "
                              f"(learning rate {lr:g}, backend {backend}); try a smaller --lr")


def progress_bar(total: int, description: str, unit: str = "step", enabled: bool | None = None):
    """A tqdm bar on stderr, shown only when stderr is a terminal unless ``enabled`` says."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True,
                disable=not (sys.stderr.isatty() if enabled is None else enabled))


@contextmanager
def stop_on_sigint() -> Iterator[threading.Event]:
    """Turn Ctrl-C into a request (an Event) that the loop honours after the current step,
    so an interruption never leaves parameters half-updated."""
    request = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: request.set())
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_here(config: TrainConfig, state: TrainingState, checkpoint: str | os.PathLike | None):
    """Honour a Ctrl-C: save a checkpoint when there is a place for one, then stop."""
    if checkpoint is None:
        raise KeyboardInterrupt
    save_training(checkpoint, config, state)
    raise TrainingInterruptedError(
        f"interrupted after step {state.step}; checkpoint saved to {checkpoint}; "
        f"continue with: twinnet train --resume {Path(checkpoint).parent}")


def train(config: TrainConfig, data: Mnist, progress: bool | None = None,
          on_record: Callable[[int, dict[str, float]], None] | None = None,
          final_splits: tuple[str, ...] = SPLITS, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 0, resume: bool = False,
          threads: int | None = None) -> tuple[Backend, dict[str, Any]]:
    """Train ``config.model`` on ``config.backend``; returns the model and the run's metrics.

    ``on_record(step, values)`` is called at every curve point. ``final_splits`` are
    evaluated at the end (a sweep leaves out "test", which must never inform a choice).
    With a ``checkpoint`` path the state is saved there every ``checkpoint_every`` steps
    and on Ctrl-C; ``resume`` first restores it. ``threads`` is the twin's thread count
    (``backend.load_model``; default: as the process is set up). Raises DivergenceError
    (see check_loss).
    """
    started = time.perf_counter()
    state = start_training(config, len(data.train), checkpoint if resume else None, threads)
    resumed_at = state.step if resume else None
    train_started = time.perf_counter()
    bar = progress_bar(config.steps, f"{config.model} ({config.backend})", enabled=progress)
    # Divergence is caught from the loss; NumPy's overflow warnings would only repeat it.
    with bar, stop_on_sigint() as sigint, np.errstate(over="ignore", invalid="ignore"):
        bar.update(state.step)
        for step in range(state.step + 1, config.steps + 1):
            batch = state.order.next()
            lr = learning_rate(config, step - 1)
            loss, correct = state.model.train_step(data.train.x[batch], data.train.y[batch], lr)
            check_loss(loss, step, lr, config.backend)
            state.sums.add(loss, correct, len(batch))
            state.step = step
            if step % config.eval_every == 0 or step == config.steps:
                point = state.record_point(data.validation)
                if on_record is not None:
                    on_record(step, point)
                bar.set_postfix(loss=f"{point['train_loss']:.4f}", val_acc=f"{point['val_accuracy']:.2%}")
            bar.update(1)
            if step == config.steps:
                break  # a Ctrl-C during the last step lets the run finish
            if sigint.is_set():
                stop_here(config, state, checkpoint)
            if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
                save_training(checkpoint, config, state)
    train_seconds = time.perf_counter() - train_started
    return state.model, run_metrics(config, state, data, final_splits, train_seconds, started,
                                    resumed_at)


def run_metrics(config: TrainConfig, state: TrainingState, data: Mnist, final_splits: tuple[str, ...],
                train_seconds: float, started: float, resumed_at: int | None) -> dict[str, Any]:
    """metrics.json's content: configuration, environment, curves, final figures, timing."""
    final = {split: evaluate(state.model, getattr(data, split).x, getattr(data, split).y)
             for split in final_splits}
    return {
        "config": asdict(config),
        "architecture": DESCRIPTIONS[config.model],
        "environment": environment(),
        "curves": asdict(state.curves),
        "final": {split: {k: v for k, v in r.items() if k != "confusion_matrix"}
                  for split, r in final.items()},
        "confusion_matrix": final["test"]["confusion_matrix"] if "test" in final else None,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "resumed_at_step": resumed_at,
    }
