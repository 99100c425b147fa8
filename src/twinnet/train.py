"""One training loop for both twins, and the files a run leaves behind.

The loop only talks to a ``Backend`` (see ``twinnet.backend``): it draws the
mini-batches, asks the backend for a training step, records curves, evaluates,
and writes ``weights.npz``, ``metrics.json``, ``curves.png`` and ``confusion.png``.
Both twins therefore see the very same batches in the very same order for a seed.
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

from twinnet import __version__
from twinnet.backend import Backend, load_model
from twinnet.data import Mnist
from twinnet.environment import environment
from twinnet.errors import TwinnetError
from twinnet.metrics import evaluate
from twinnet.models import DESCRIPTIONS
from twinnet.util import write_json_atomic
from twinnet.weights import save_weights

DEFAULT_LR = {"sgd": 0.1, "adam": 0.001}
# A batch's mean cross-entropy above this means the true digits get probability below
# e^-100 on average. A learning run starts near ln(10) = 2.3 and never comes close; a
# diverged one rarely becomes NaN, because softmax cross-entropy computed from logits
# stays finite while the weights run off, so this bound is what catches it.
DIVERGED_LOSS = 100.0
SCHEDULES = ("constant", "cosine")


class DivergenceError(TwinnetError):
    """The training loss became NaN, infinite, or larger than DIVERGED_LOSS."""

    exit_code = 3


@dataclass
class TrainConfig:
    """Everything that determines a run; stored in metrics.json and the weights' meta."""

    model: str
    backend: str = "tf"
    optimizer: str = "sgd"
    lr: float = 0.1
    steps: int = 2000
    batch_size: int = 100
    seed: int = 0
    eval_every: int = 0  # 0: about 50 points over the run
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise TwinnetError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise TwinnetError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TwinnetError(f"--lr must be a positive number, got {self.lr}")
        if self.eval_every < 0:
            raise TwinnetError(f"--eval-every must be positive, got {self.eval_every}")
        if self.schedule not in SCHEDULES:
            raise TwinnetError(f"unknown schedule {self.schedule!r}: expected one of {SCHEDULES}")
        if self.eval_every == 0:
            self.eval_every = max(1, self.steps // 50)


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
    left for the next shuffle, so every batch is full. The state (generator, current
    permutation, position) is plain data, so a checkpoint can store and restore it.
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


@dataclass
class Curves:
    """Points recorded every ``eval_every`` steps; training figures are means over the
    batches since the previous point, validation figures cover the whole split."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


def make_progress(total: int, description: str, enabled: bool | None = None):
    """A tqdm bar on stderr, shown only when stderr is a terminal unless ``enabled`` says."""
    from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal

    return tqdm(total=total, desc=description, unit="step", dynamic_ncols=True,
                disable=not (sys.stderr.isatty() if enabled is None else enabled))


class TrainingInterruptedError(TwinnetError):
    """Ctrl-C during training: the run stopped after a whole step, checkpoint saved."""

    exit_code = 130


@contextmanager
def stop_on_sigint() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a request that the loop honours after the current step, so an
    interruption never leaves parameters half-updated."""
    request = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        request["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def train(
    config: TrainConfig,
    data: Mnist,
    progress: bool | None = None,
    on_record: Callable[[int, dict[str, float]], None] | None = None,
    final_splits: tuple[str, ...] = ("train", "validation", "test"),
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> tuple[Backend, dict[str, Any]]:
    """Train ``config.model`` on ``config.backend``; returns the model and the run's metrics.

    ``on_record(step, values)`` is called at every curve point. ``final_splits`` are
    evaluated at the end; a learning-rate sweep leaves out "test", which must never
    inform a choice. The confusion matrix is the test split's, when evaluated.

    With a ``checkpoint`` path, the state is saved there every ``checkpoint_every``
    steps and on Ctrl-C (then TrainingInterruptedError is raised); ``resume`` first restores
    it, so the run continues exactly where it stopped. Raises DivergenceError, naming
    the step, learning rate and backend, as soon as a batch loss is NaN, infinite or
    above DIVERGED_LOSS.
    """
    from twinnet.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint

    started = time.perf_counter()
    model = load_model(config.model, config.backend, seed=config.seed, optimizer=config.optimizer)
    order = BatchOrder(len(data.train), config.batch_size, config.seed)
    progress_state: dict[str, Any] = {"curves": asdict(Curves()), "sums": [0.0, 0, 0]}
    first_step = 1
    if resume:
        state, arrays = read_checkpoint(checkpoint)
        restore_checkpoint(arrays, state, model, order)
        progress_state = {"curves": state["curves"], "sums": state["sums"]}
        first_step = state["step"] + 1
    curves = Curves(**progress_state["curves"])
    sums = progress_state["sums"]  # loss sum, correct count, images seen since the last point

    def save(step: int) -> None:
        save_checkpoint(checkpoint, config, step, model, order,
                        {"curves": asdict(curves), "sums": sums})

    train_started = time.perf_counter()
    label = f"{config.model} ({config.backend})"
    # Divergence is caught from the loss below; NumPy's overflow warnings would only repeat it.
    with make_progress(config.steps, label, progress) as bar, stop_on_sigint() as sigint, \
            np.errstate(over="ignore", invalid="ignore"):
        bar.update(first_step - 1)
        for step in range(first_step, config.steps + 1):
            batch = order.next()
            lr = learning_rate(config, step - 1)
            loss, correct = model.train_step(data.train.x[batch], data.train.y[batch], lr)
            if not loss <= DIVERGED_LOSS:  # also true for NaN
                raise DivergenceError(
                    f"training diverged at step {step}: loss is {loss} "
                    f"(learning rate {lr:g}, backend {config.backend}); try a smaller --lr"
                )
            sums[0] += loss
            sums[1] += correct
            sums[2] += len(batch)
            if step % config.eval_every == 0 or step == config.steps:
                val = evaluate(model, data.validation.x, data.validation.y)
                point = {
                    "train_loss": sums[0] / (sums[2] / config.batch_size),
                    "train_accuracy": sums[1] / sums[2],
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                }
                curves.step.append(step)
                for key, value in point.items():
                    getattr(curves, key).append(value)
                if on_record is not None:
                    on_record(step, point)
                sums[:] = [0.0, 0, 0]
                bar.set_postfix(loss=f"{point['train_loss']:.4f}",
                                val_acc=f"{point['val_accuracy']:.2%}")
            bar.update(1)
            if step == config.steps:
                break  # a Ctrl-C during the last step lets the run finish
            if sigint["stop"]:
                if checkpoint is None:
                    raise KeyboardInterrupt
                save(step)
                raise TrainingInterruptedError(
                    f"interrupted after step {step}; checkpoint saved to {checkpoint}; "
                    f"continue with: twinnet train --resume {Path(checkpoint).parent}")
            if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
                save(step)
    train_seconds = time.perf_counter() - train_started
    final = {split: evaluate(model, getattr(data, split).x, getattr(data, split).y)
             for split in final_splits}
    metrics = {
        "config": asdict(config),
        "architecture": DESCRIPTIONS[config.model],
        "environment": environment(),
        "curves": asdict(curves),
        "final": {split: {k: v for k, v in r.items() if k != "confusion_matrix"}
                  for split, r in final.items()},
        "confusion_matrix": final["test"]["confusion_matrix"] if "test" in final else None,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "resumed_at_step": first_step - 1 if resume else None,
    }
    return model, metrics


def weights_meta(config: TrainConfig) -> dict[str, Any]:
    """The ``meta`` a run stores in its weights file."""
    return {
        "backend": config.backend,
        "steps": config.steps,
        "optimizer": config.optimizer,
        "learning_rate": config.lr,
        "schedule": config.schedule,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "twinnet_version": __version__,
    }


def write_run(out_dir: str | os.PathLike, model: Backend, metrics: dict[str, Any]) -> None:
    """Write weights.npz, metrics.json, curves.png and confusion.png into ``out_dir``,
    each atomically, metrics.json last so its presence means the run is complete."""
    from twinnet.plots import plot_confusion, plot_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(**metrics["config"])
    title = f"{config.model} trained by the {config.backend} twin"
    save_weights(out / "weights.npz", config.model, model.params, weights_meta(config))
    plot_curves(metrics["curves"], title, out / "curves.png")
    plot_confusion(metrics["confusion_matrix"], title, out / "confusion.png")
    write_json_atomic(out / "metrics.json", metrics)
