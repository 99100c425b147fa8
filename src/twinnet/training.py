"""One training loop for both twins.

The loop only talks to a ``Backend`` (see ``twinnet.backend``): it draws the
mini-batches, asks the backend for a training step, records curves and evaluates.
Both twins therefore see the very same batches in the very same order for a seed.
Writing the run folder is ``twinnet.runs``'s job; saving a checkpoint is
``twinnet.checkpoint``'s, from the plain ``state_dict()`` of each part of the loop, and
``load_checkpoint`` reads one back in bounded memory and checks every section.

Ctrl-C is honoured at safe points only: after a whole step, after each split of the
final evaluation, after each file of the run folder. Each saves a checkpoint (when the
run has a place for one) and raises TrainingInterruptedError, so no Ctrl-C loses the run.
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
from twinnet.checkpoint import (
    SPEC_SECTION,
    CheckpointError,
    expect_keys,
    load_checkpoint,
    save_checkpoint,
)
from twinnet.config import TrainConfig
from twinnet.data import Mnist, Split
from twinnet.environment import environment
from twinnet.errors import TwinnetError
from twinnet.memory import check_memory, path_of
from twinnet.metrics import evaluate
from twinnet.models import (
    describe,
    dropout_masks,
    has_dropout,
    is_spec_file,
    model_name,
    pin_spec,
    read_document,
    spec_document,
)
from twinnet.progress import progress_bar
from twinnet.runs import write_run
from twinnet.util import is_int, is_number

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
        """Continue exactly where the order that gave ``state_dict()`` was. ValueError
        ("order: ...") unless ``perm`` is a permutation of range(n) as int64, ``position``
        an integer from 0 to n and ``rng`` a state of NumPy's PCG64."""
        expect_keys(state, ("perm", "position", "rng"), "order")
        perm, position = state["perm"], state["position"]
        if not (isinstance(perm, np.ndarray) and perm.dtype == np.int64 and perm.shape == (self.n,)):
            described = f"{perm.dtype} {perm.shape}" if isinstance(perm, np.ndarray) else type(perm).__name__
            raise ValueError(f"order: perm must be {self.n} int64 indices, got {described}")
        if perm.min() < 0 or perm.max() >= self.n:
            raise ValueError(f"order: perm holds indices outside 0..{self.n - 1}")
        if missing := self.n - np.count_nonzero(np.bincount(perm, minlength=self.n)):
            raise ValueError(f"order: perm is not a permutation of range({self.n}) "
                             f"({missing} indices missing)")
        if not is_int(position) or not 0 <= position <= self.n:
            raise ValueError(f"order: position must be an integer from 0 to {self.n}")
        try:
            self.rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise ValueError(f"order: rng is not a PCG64 state ({exc})"[:300]) from None
        self.perm, self.position = perm, position


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
    # Seconds spent in the steps and in all, over every segment of an interrupted run;
    # the clocks of this segment run from ``segment_started`` and ``steps_started``.
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    segment_started: float = field(default_factory=time.perf_counter)
    steps_started: float | None = None
    # The step hook, for a caller that drives the loop step by step (``twinnet watch``
    # runs two twins' states in lockstep): ``take_step`` calls it after each update with
    # (step, the batch's loss, its correct count). Not part of the checkpoint.
    on_step: Callable[[int, float, int], None] | None = None

    def start_steps(self) -> None:
        self.steps_started = time.perf_counter()

    def stop_steps(self) -> None:
        self.train_seconds = self.training_time()
        self.steps_started = None

    def training_time(self) -> float:
        """Seconds spent in steps, this segment's included."""
        running = 0.0 if self.steps_started is None else time.perf_counter() - self.steps_started
        return self.train_seconds + running

    def wall_time(self) -> float:
        """Seconds since the run began, over every segment."""
        return self.wall_seconds + time.perf_counter() - self.segment_started

    def state_dict(self) -> dict[str, Any]:
        """Sections of plain arrays and JSON-able values, as ``twinnet.checkpoint`` stores them."""
        return {"step": self.step, "params": self.model.params,
                "optimizer": self.model.optimizer_state_dict(), "order": self.order.state_dict(),
                "progress": {"curves": asdict(self.curves), "sums": asdict(self.sums),
                             "train_seconds": self.training_time(), "wall_seconds": self.wall_time()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, as ``checkpoint.load_checkpoint`` returns it (whose
        configuration, parameters and optimizer slots it has checked). ValueError
        ("order: ...", "progress: ...") if the data order or the progress is malformed."""
        self.order.load_state_dict(state["order"])
        progress = state["progress"]
        check_progress(progress)
        self.model.set_params(state["params"])
        self.model.load_optimizer_state_dict(state["optimizer"])
        self.curves = Curves(**progress["curves"])
        self.sums = RunningSums(**progress["sums"])
        self.step = state["step"]
        self.train_seconds = progress["train_seconds"]
        self.wall_seconds = progress["wall_seconds"]

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


def check_progress(progress: Any) -> None:
    """ValueError ("progress: ...") unless ``progress`` holds curves (lists of equal
    length: integer steps, finite numbers), the running sums and the seconds so far."""
    expect_keys(progress, ("curves", "sums", "train_seconds", "wall_seconds"), "progress")
    curves, sums = progress["curves"], progress["sums"]
    expect_keys(curves, tuple(Curves.__dataclass_fields__), "progress: curves")
    expect_keys(sums, tuple(RunningSums.__dataclass_fields__), "progress: sums")
    lengths = {len(value) if isinstance(value, list) else -1 for value in curves.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise ValueError("progress: curves must be lists of equal length")
    if not all(map(is_int, curves["step"])) or not all(
            is_number(v) for key, values in curves.items() if key != "step" for v in values):
        raise ValueError("progress: curves must hold integer steps and finite numbers")
    if not all(is_number(value) and value >= 0 for value in sums.values()) or not all(
            is_int(sums[key]) for key in ("correct", "images", "batches")):
        raise ValueError("progress: sums must be non-negative numbers")
    for key in ("train_seconds", "wall_seconds"):
        if not is_number(progress[key]) or progress[key] < 0:
            raise ValueError(f"progress: {key} must be a non-negative number")


def check_training_memory(config: TrainConfig, reference: bool = False, threads: int | None = None,
                          copies: int = 1) -> None:
    """MemoryBudgetError (one line naming the layer) unless training ``config`` fits the
    memory budget (``memory.check_memory``), ``copies`` runs at once; before any allocation."""
    parts = threads if threads is not None else os.cpu_count() or 1
    check_memory(config.model, config.batch_size, training=True, paths=(path_of(config.backend, reference),),
                 optimizer=config.optimizer, parts=parts, copies=copies,
                 what=f"training, batch {config.batch_size}")


def start_training(config: TrainConfig, n_train: int, checkpoint: str | os.PathLike | None = None,
                   threads: int | None = None, reference: bool = False,
                   lesson: dict[str, object] | None = None) -> TrainingState:
    """A fresh state for ``config``, or the one saved in ``checkpoint`` when given (which
    must be of the same model, optimizer and batch size; other settings may differ);
    ``threads``, ``reference`` and ``lesson`` as in ``backend.load_model``."""
    if checkpoint is not None:  # first: it pins the spec the run trains (checkpoint.pin_stored_spec)
        saved, sections = load_checkpoint(checkpoint)
        for name in ("model", "optimizer", "batch_size"):
            if getattr(saved, name) != getattr(config, name):
                raise CheckpointError(f"{checkpoint}: holds a run with {name} {getattr(saved, name)}, "
                                      f"not {getattr(config, name)}")
    elif is_spec_file(config.model):  # the spec as it is now, for the whole run and its files
        pin_spec(config.model, read_document(config.model))
    check_training_memory(config, reference, threads)
    model = load_model(config.model, config.backend, seed=config.seed, optimizer=config.optimizer,
                       threads=threads, reference=reference, lesson=lesson)
    state = TrainingState(model, BatchOrder(n_train, config.batch_size, config.seed))
    if checkpoint is not None:
        try:
            state.load_state_dict(sections)
        except ValueError as exc:
            raise CheckpointError(f"{checkpoint}: {exc}") from None
    return state


def save_training(path: str | os.PathLike, config: TrainConfig, state: TrainingState) -> None:
    """Save the run's checkpoint; a run of a spec file stores the spec it trains too."""
    spec = {SPEC_SECTION: spec_document(config.model)} if is_spec_file(config.model) else {}
    save_checkpoint(path, {"config": asdict(config), **spec, **state.state_dict()})


def check_loss(loss: float, step: int, lr: float, backend: str) -> None:
    """DivergenceError, naming the step, rate and backend, unless the loss is a sane number."""
    if not loss <= DIVERGED_LOSS:  # also true for NaN
        raise DivergenceError(f"training diverged at step {step}: loss is {loss} "
                              f"(learning rate {lr:g}, backend {backend}); try a smaller --lr")


# Seconds a Ctrl-C waits for the step under way: a step takes milliseconds to a second, so
# one that has not ended by then waits on something that will not answer (a worker process
# stopped with SIGSTOP would hold it for the workers' 60 s reply timeout).
STEP_GRACE_SECONDS = 3.0


class StopRequest(threading.Event):
    """Ctrl-C as a request (``is_set``) that the loop honours at its next safe point
    (``honour``), with a watchdog for a step that never gets there: STEP_GRACE_SECONDS
    after the request, unless it was honoured, SIGINT is sent to the main thread again and
    the handler then raises KeyboardInterrupt wherever the thread waits."""

    def __init__(self) -> None:
        super().__init__()
        self.honoured = self.overdue = False
        self.in_step = False  # the loop is inside a step: its state may be half-updated
        self.timer: threading.Timer | None = None

    def handle(self, signum: int, frame: Any) -> None:
        """The SIGINT handler (main thread): request a stop; when overdue, stop now."""
        if self.is_set():
            if self.overdue and not self.honoured:
                raise KeyboardInterrupt
            return
        self.set()
        self.timer = threading.Timer(STEP_GRACE_SECONDS, self._poke, (threading.main_thread().ident,))
        self.timer.daemon = True
        self.timer.start()

    def _poke(self, main: int) -> None:
        if not self.honoured:
            self.overdue = True
            signal.pthread_kill(main, signal.SIGINT)

    def honour(self) -> None:
        """The loop is stopping at a safe point: the watchdog stands down."""
        self.honoured = True
        if self.timer is not None:
            self.timer.cancel()


@contextmanager
def stop_on_sigint() -> Iterator[StopRequest]:
    """Turn Ctrl-C into a request (a ``StopRequest``) that the loop honours after the
    current step, so an interruption never leaves parameters half-updated. What does not
    reach a safe point within STEP_GRACE_SECONDS of the Ctrl-C is abandoned by a
    KeyboardInterrupt (``request.overdue``), which ``train`` turns into its one line."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGINT, request.handle)
    try:
        yield request
    finally:
        request.honour()
        signal.signal(signal.SIGINT, previous)


def stop_here(config: TrainConfig, state: TrainingState, checkpoint: str | os.PathLike | None,
              when: str) -> None:
    """Honour a Ctrl-C: save a checkpoint when there is a place for one, then stop.
    ``when`` says where the run was: "after step 12", "in the final evaluation"."""
    if checkpoint is None:
        raise KeyboardInterrupt
    resume = f"twinnet train --resume {Path(checkpoint).parent}"
    try:
        save_training(checkpoint, config, state)
    except TwinnetError as exc:  # a full disk: say so in the one line
        raise TrainingInterruptedError(f"interrupted {when}; checkpoint not saved: {exc}") from None
    raise TrainingInterruptedError(f"interrupted {when}; checkpoint saved to {checkpoint}; "
                                   f"continue with: {resume}")


def train(config: TrainConfig, data: Mnist, progress: bool | None = None,
          on_record: Callable[[int, dict[str, float]], None] | None = None,
          final_splits: tuple[str, ...] = SPLITS, checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 0, resume: bool = False,
          out_dir: str | os.PathLike | None = None,
          threads: int | None = None, reference: bool = False,
          lesson: dict[str, object] | None = None) -> tuple[Backend, dict[str, Any]]:
    """Train ``config.model`` on ``config.backend``; returns the model and the run's metrics.

    ``on_record(step, values)`` is called at every curve point. ``final_splits`` are
    evaluated at the end (a sweep leaves out "test", which must never inform a choice).
    With a ``checkpoint`` path the state is saved there every ``checkpoint_every`` steps
    (a save that fails is warned about and training goes on: ``save_periodic_checkpoint``)
    and on Ctrl-C; ``resume`` first restores it (a run saved after its last step just
    evaluates and writes). With ``out_dir`` the run folder is written (``runs.write_run``,
    the caller holding the folder) under the same Ctrl-C handling and the checkpoint is
    removed once it is. ``threads`` is the twin's thread count (``backend.load_model``;
    default: as the process is set up); ``reference`` trains the NumPy twin on its reference
    layers alone. Raises DivergenceError (see check_loss),
    TrainingInterruptedError.
    """
    state = start_training(config, len(data.train), checkpoint if resume else None, threads, reference,
                           lesson)
    resumed_at = state.step if resume else None
    failing = False  # the last periodic checkpoint could not be saved
    # Divergence is caught from the loss; NumPy's overflow warnings would only repeat it.
    with stop_on_sigint() as sigint, np.errstate(over="ignore", invalid="ignore"):
        try:
            description = f"{model_name(config.model)} ({config.backend})"
            with progress_bar(config.steps, description, enabled=progress) as bar:
                state.start_steps()
                for step in range(state.step + 1, config.steps + 1):
                    sigint.in_step = True
                    point = take_step(config, state, data, step)
                    sigint.in_step = False
                    if point is not None:
                        if on_record is not None:
                            on_record(step, point)
                        bar.set_postfix(loss=f"{point['train_loss']:.4f}",
                                        val_acc=f"{point['val_accuracy']:.2%}")
                    bar.update(step - bar.n)
                    if step == config.steps:
                        break  # a Ctrl-C during the last step is honoured after the evaluation
                    if sigint.is_set():
                        sigint.honour()
                        stop_here(config, state, checkpoint, f"after step {step}")
                    if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
                        failing = save_periodic_checkpoint(checkpoint, config, state, failing)
                state.stop_steps()

            def honour_sigint(when: str) -> Callable[[], None]:
                def check() -> None:
                    if sigint.is_set():
                        sigint.honour()
                        stop_here(config, state, checkpoint, f"{when}, after the last step {state.step}")
                return check

            metrics = run_metrics(config, state, data, final_splits, resumed_at,
                                  honour_sigint("in the final evaluation"))
            if out_dir is not None:
                metrics = finish_run(out_dir, config, state, metrics, checkpoint,
                                     honour_sigint("while writing the run"))
        except KeyboardInterrupt:
            if not sigint.overdue:
                raise
            # The watchdog: Ctrl-C came, and what was under way did not end in time.
            sigint.honour()
            if sigint.in_step:
                kept = (f"the earlier checkpoint {checkpoint} is kept; continue with: twinnet train "
                        f"--resume {Path(checkpoint).parent}" if checkpoint is not None
                        and Path(checkpoint).is_file() else "no checkpoint was saved")
                raise TrainingInterruptedError(
                    f"interrupted during step {state.step + 1}, which did not end within "
                    f"{STEP_GRACE_SECONDS:g} s of Ctrl-C (is a worker process stopped?); the step is "
                    f"not saved, {kept}") from None
            stop_here(config, state, checkpoint, f"after step {state.step} (what followed it did not "
                      f"end within {STEP_GRACE_SECONDS:g} s of Ctrl-C)")
    return state.model, metrics


def take_step(config: TrainConfig, state: TrainingState, data: Mnist, step: int) -> dict[str, float] | None:
    """Update number ``step`` (1-based) on the next batch; the curve point it closes, if any."""
    batch = state.order.next()
    lr = learning_rate(config, step - 1)
    if has_dropout(config.model):  # the same masks for both twins: drawn here, from the seed
        state.model.set_dropout_masks(dropout_masks(config.model, len(batch), config.seed, step))
    loss, correct = state.model.train_step(data.train.x[batch], data.train.y[batch], lr)
    check_loss(loss, step, lr, config.backend)
    state.sums.add(loss, correct, len(batch))
    state.step = step
    if state.on_step is not None:
        state.on_step(step, loss, correct)
    if step % config.eval_every == 0 or step == config.steps:
        return state.record_point(data.validation)
    return None


def finish_run(out_dir: str | os.PathLike, config: TrainConfig, state: TrainingState,
               metrics: dict[str, Any], checkpoint: str | os.PathLike | None,
               check: Callable[[], None]) -> dict[str, Any]:
    """Write the run folder (``runs.write_run``, calling ``check()`` after each file) and
    remove the checkpoint it supersedes; returns the metrics as written.

    If the writing fails (a full disk, say: the start-up check of the free space cannot
    foresee what else fills the disk meanwhile), the run folder is left as it was and
    the trained state is saved as a checkpoint, when there is a place for one (the failed
    files are removed first, so their room is free for it). The one-line error then says
    what was lost and how to go on: ``--resume`` after making room, from this checkpoint,
    or from an earlier one if this one cannot be written either; without any, that the
    training is lost."""
    try:
        metrics = write_run(out_dir, state.model.params, metrics, check)
    except TrainingInterruptedError:
        raise
    except TwinnetError as exc:
        if checkpoint is None:
            raise
        resume = f"twinnet train --resume {out_dir}"
        try:
            save_training(checkpoint, config, state)
        except TwinnetError:
            if Path(checkpoint).is_file():
                raise TwinnetError(f"{exc}; nor could the trained state be saved: the steps after "
                                   f"the last checkpoint ({checkpoint}) are lost; make room and "
                                   f"continue from it with: {resume}") from None
            raise TwinnetError(f"{exc}; nor could the trained state be saved as a checkpoint: "
                               f"the {state.step} steps of training are lost; make room and train "
                               "again") from None
        raise TwinnetError(f"{exc}; nothing is lost: the trained state is saved in {checkpoint}: "
                           f"make room and finish with: {resume}") from None
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return metrics


def save_periodic_checkpoint(path: str | os.PathLike, config: TrainConfig, state: TrainingState,
                             failing: bool) -> bool:
    """Save the checkpoint of ``--checkpoint-every``; whether saving failed.

    A failed save (a full disk) does not stop the run: the previous checkpoint stays as
    it was (checkpoints are written atomically) and training goes on, since the run may
    still finish and its final write is handled on its own (``finish_run``). The first
    failure of a series prints one warning line on stderr; ``failing`` says whether the
    previous save failed too."""
    try:
        save_training(path, config, state)
    except TwinnetError as exc:
        if not failing:
            print(f"twinnet: warning: checkpoint after step {state.step} not saved ({exc}); "
                  "training goes on, and a resume would start from the previous checkpoint",
                  file=sys.stderr, flush=True)
        return True
    return False


def run_metrics(config: TrainConfig, state: TrainingState, data: Mnist, final_splits: tuple[str, ...],
                resumed_at: int | None, check: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """metrics.json's content: configuration, environment, curves, final figures, timing
    (summed over the segments of a resumed run). ``check()`` runs after each split (it
    may raise, on Ctrl-C)."""
    final = {}
    for split in final_splits:
        final[split] = evaluate(state.model, getattr(data, split).x, getattr(data, split).y)
        check()
    return {
        "config": asdict(config),
        "model_name": model_name(config.model),  # what outputs call it: a spec file's `name`
        "architecture": describe(config.model),
        "environment": environment(),
        "curves": asdict(state.curves),
        "final": {split: {k: v for k, v in r.items() if k != "confusion_matrix"}
                  for split, r in final.items()},
        "confusion_matrix": final["test"]["confusion_matrix"] if "test" in final else None,
        "train_seconds": state.training_time(),
        "wall_seconds": state.wall_time(),
        "resumed_at_step": resumed_at,
    }
