"""``twinnet watch``: both twins train in lockstep while a local page shows them.

The run (``LiveRun``) trains the twins of one configuration from the same initial
weights on the same batches, step by step: each lockstep step is one
``training.take_step`` of the NumPy twin and then one of the TF twin, each on its own
``training.TrainingState``, so the step itself (batch order, learning-rate schedule,
dropout masks, the divergence check, the curve points every ``eval_every`` steps) is the
shared loop's own. The state's step hook (``TrainingState.on_step``) hands each
batch's loss to the run's history. Without TensorFlow the NumPy twin trains alone.

One thread, the trainer, owns both models: everything that touches them (predicting a
drawing, copying the first layer's weights for the page, measuring the drift) runs
there, between two steps, so a request never sees half an update and never runs a
layer's forward pass while a step's backward pass needs its caches. The web server only
reads the history arrays, which the trainer fills in step order.

What the run records, at full resolution, for the run: each twin's loss at every step
and the seconds it spent in each step; the curve points (validation accuracy every
``eval_every`` steps, the loop's own); and the drift, for each parameter
``max |W_tf - W_numpy| / max |W_numpy|`` and the same of the logits of a fixed
validation batch (DRIFT_IMAGES images). Measuring the drift copies every parameter out of
both twins and runs the batch through both, so it is sampled: after each measurement
the trainer waits until its steps have taken 1 / DRIFT_BUDGET times as long as the
measurement did, so the drift costs about DRIFT_BUDGET of the training time (and the
first and last steps are always measured). The wire gets a thinned copy
(``thin_indices``): at most ``points`` points a series, whatever the rate.

Stop (the page's button, ``POST /api/run/stop``, or Ctrl-C) and the end of the run
write one run folder per twin, ``OUT/numpy`` and ``OUT/tf``, as ``twinnet train`` does
(``runs.write_run``: weights, metrics, plots). A run stopped before its last step also
keeps its checkpoint there, so ``twinnet train --resume OUT/numpy`` continues it; its
metrics.json says ``stopped_at_step``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.checkpoint import CHECKPOINT_NAME
from twinnet.config import DEFAULT_LR, TrainConfig
from twinnet.data import Mnist
from twinnet.environment import install_command
from twinnet.errors import TwinnetError
from twinnet.models import get_spec, model_name, multiply_adds_per_image, param_shapes
from twinnet.runs import write_run
from twinnet.serve import CSP, STATIC, Twins, UploadError, Uploads, installed, upload_or_refusal
from twinnet.training import (
    SPLITS,
    TrainingState,
    finish_run,
    run_metrics,
    save_training,
    start_training,
    take_step,
)

DRIFT_IMAGES = 100  # the fixed validation batch whose logits' drift is recorded: the split's first
DRIFT_BUDGET = 0.01  # the share of the training time the drift measurements may take
MAX_WATCH_STEPS = 1_000_000  # the history keeps every step: 12 bytes a step and twin
WIRE_POINTS = 400  # a series' points on the wire unless the page asks for another number
MAX_WIRE_POINTS = 5000
WEIGHT_IMAGES = 16  # first-layer images shown per twin
MAX_JOBS = 64  # requests waiting for the trainer before more get 503
RATE_WINDOW = 200  # a twin's steps per second is over its last this many steps
# About a minute of lockstep training on 2 cores: seconds a step, from the multiply-adds
# of a batch (fitted to `twinnet bench` on the four models: docs/performance.md).
WATCH_SECONDS = 60.0
STEP_OVERHEAD_SECONDS = 0.5e-3
SECONDS_PER_MULTIPLY_ADD = 0.14e-9
TWINS = ("numpy", "tf")


def default_steps(model: str, batch_size: int) -> int:
    """Steps that take about WATCH_SECONDS of lockstep training on 2 cores, to two
    significant figures (the estimate is that rough)."""
    seconds = STEP_OVERHEAD_SECONDS + SECONDS_PER_MULTIPLY_ADD * multiply_adds_per_image(model) * batch_size
    steps = WATCH_SECONDS / seconds
    scale = 10 ** max(0, int(math.log10(steps)) - 1)
    return int(max(100, min(MAX_WATCH_STEPS, round(steps / scale) * scale)))


def watch_config(model: str, steps: int | None = None, optimizer: str | None = None,
                 lr: float | None = None, batch_size: int | None = None, seed: int | None = None,
                 schedule: str | None = None, eval_every: int | None = None) -> TrainConfig:
    """The run's configuration (its ``backend`` is the NumPy twin's; the TF twin's is the
    same with ``backend="tf"``): what is given, else the model's report settings (its
    preset in presets.toml: optimizer, learning rate, schedule, batch size, seed), else
    TrainConfig's defaults; ``steps`` by default ``default_steps``. A learning rate is
    the preset's only with the preset's optimizer. Raises ConfigError naming the field."""
    from twinnet.presets import load_presets

    get_spec(model)  # a bad spec file is one line, before anything else
    preset = next((p.config for p in load_presets() if p.config.model == model
                   and p.config.backend == "numpy"), None)
    base = preset or TrainConfig(model)
    optimizer = optimizer or base.optimizer
    if lr is None:
        lr = base.lr if optimizer == base.optimizer else DEFAULT_LR[optimizer]
    batch_size = base.batch_size if batch_size is None else batch_size
    return TrainConfig(model=model, backend="numpy", optimizer=optimizer, lr=lr,
                       steps=steps if steps is not None else default_steps(model, max(1, batch_size)),
                       batch_size=batch_size, seed=base.seed if seed is None else seed,
                       eval_every=0 if eval_every is None else eval_every,
                       schedule=schedule or base.schedule)


def thin_indices(n: int, limit: int) -> np.ndarray:
    """Indices of at most about ``limit`` of ``n`` points, evenly spaced, the last always
    in: a power-of-two stride, so the points chosen stay the same while ``n`` grows
    (until the stride doubles), and a chart drawn from them does not flicker."""
    if n <= limit:
        return np.arange(n)
    stride = 1 << math.ceil(math.log2(n / limit))
    indices = np.arange(stride - 1, n, stride)
    return indices if indices[-1] == n - 1 else np.append(indices, n - 1)


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """The trailing mean of the last ``window`` values at each position (fewer at the start)."""
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def relative_drift(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| (/ max |b| where a is all zero; 0 where both are)."""
    difference = float(np.max(np.abs(a - b), initial=0.0))
    scale = float(np.max(np.abs(a), initial=0.0)) or float(np.max(np.abs(b), initial=0.0))
    return difference / scale if scale > 0 else 0.0


def first_layer(model: str) -> tuple[str, tuple[int, int]] | None:
    """The first weight matrix's parameter name and the (height, width) of one of its
    images: a conv filter (kernel x kernel, input channel 0), or a dense unit's input
    weights as a square image when its input is one (784 -> 28 x 28), else as a row."""
    shapes = param_shapes(model)
    name = next((key for key in shapes if key.endswith("/W")), None)
    if name is None:
        return None
    shape = shapes[name]
    if len(shape) == 4:
        return name, (shape[0], shape[1])
    side = math.isqrt(shape[0])
    return name, (side, side) if side * side == shape[0] else (1, shape[0])


def layer_images(weights: np.ndarray, size: tuple[int, int], count: int) -> np.ndarray:
    """float32 (count, height, width) images of a weight matrix: conv HWIO -> the first
    ``count`` filters on input channel 0; dense (in, out) -> the first ``count`` columns."""
    if weights.ndim == 4:
        images = np.moveaxis(weights[:, :, 0, :count], -1, 0)
    else:
        images = weights[:, :count].T.reshape(-1, *size)
    return np.ascontiguousarray(images, dtype=np.float32)


class LiveTwins(Twins):
    """``serve.Twins`` over the models being trained, so the page's drawings go through
    the draw page's own ``predict`` (its preparation and its JSON); called by the trainer."""

    def __init__(self, model: str, numpy_model: Any, tf_model: Any | None, tf_status: str) -> None:
        # Not Twins.__init__: that one loads weights files and starts its own worker.
        self.models = {"numpy": model, "tf": model}
        self.numpy, self.tf, self.tf_status = numpy_model, tf_model, tf_status


class LiveRun:
    """One watched run: the trainer thread, its controls and its history (see the module
    docstring). ``start()`` starts it; the web app reads ``summary()`` and calls
    ``pause``, ``resume``, ``step_once``, ``stop`` and ``submit``; ``finish()`` stops it
    (saving) and waits for the trainer."""

    def __init__(self, config: TrainConfig, data: Mnist, out: Path, with_tf: bool,
                 tf_status: str = "ready", log: Callable[[str], None] | None = None) -> None:
        if config.steps > MAX_WATCH_STEPS:
            raise TwinnetError(f"--steps {config.steps}: twinnet watch keeps every step's figures; "
                               f"at most {MAX_WATCH_STEPS:,}")
        self.config, self.data, self.out = config, data, Path(out)
        self.twins = TWINS if with_tf else ("numpy",)
        self.configs = {twin: replace(config, backend=twin) for twin in self.twins}
        self.tf_status = tf_status
        self.log = log or (lambda line: print(line, flush=True))
        self.states: dict[str, TrainingState] = {}
        self.live: LiveTwins | None = None
        steps = config.steps
        self.loss = {twin: np.zeros(steps, np.float32) for twin in self.twins}
        self.seconds = {twin: np.zeros(steps, np.float32) for twin in self.twins}
        self.finished_at = np.zeros(steps, np.float64)  # perf_counter at each step's end
        self.drift: dict[str, list[tuple[int, float]]] = {}
        self.layer = first_layer(config.model)
        self.window = int(min(500, max(5, steps // 100)))  # of the smoothed loss
        self.step = 0  # lockstep steps finished
        self.state = "loading"  # loading, running, paused, saving, done
        self.error: str | None = None
        self.saved: dict[str, str] = {}
        self.stopped_at: int | None = None
        # Wall seconds of the lockstep loop: from its start to its end (or now), less the
        # time it stood paused; what scripts/watch_overhead.py compares with `train`.
        self.loop_started: float | None = None
        self.loop_ended: float | None = None
        self.paused_seconds = 0.0
        self.cond = threading.Condition()
        self.pause_requested = False
        self.stop_requested = False
        self.single_steps = 0
        self.closing = False
        self.jobs: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self.thread = threading.Thread(target=self._main, name="twinnet-watch", daemon=True)

    # --- controls (any thread) ------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def pause(self) -> None:
        with self.cond:
            self.pause_requested = True
            self.cond.notify_all()

    def resume(self) -> None:
        with self.cond:
            self.pause_requested = False
            self.cond.notify_all()

    def step_once(self) -> None:
        """One lockstep step, when paused."""
        with self.cond:
            if self.state == "paused":
                self.single_steps += 1
                self.cond.notify_all()

    def stop(self) -> None:
        """Stop after the current step and save (nothing to do once done)."""
        with self.cond:
            self.stop_requested = True
            self.cond.notify_all()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` in the trainer, between two steps; its Future. TwinnetError when
        the twins are not built yet or MAX_JOBS requests are waiting already."""
        if self.state == "loading" or (self.state == "done" and not self.live):
            raise TwinnetError("the twins are not ready yet" if self.state == "loading"
                               else f"the run ended without its twins: {self.error}")
        if len(self.jobs) >= MAX_JOBS:
            raise TwinnetError("busy; try again")
        future: Future = Future()
        with self.cond:
            self.jobs.append((fn, future))
            self.cond.notify_all()
        return future

    def finish(self, timeout: float | None = None) -> None:
        """Stop (saving, if still training) and wait for the trainer to be done."""
        self.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.state != "done" and self.thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.cond.wait(0.2 if remaining is None else min(0.2, remaining))
            self.closing = True
            self.cond.notify_all()

    # --- the trainer thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._build()
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught from the loss
                self._train()
            self._save()
        except TwinnetError as exc:
            self.error = str(exc)
            self.log(f"twinnet watch: error: {exc}")
        except Exception as exc:  # the page must say it, not go on waiting
            self.error = f"{type(exc).__name__}: {exc}"
            self.log(f"twinnet watch: error: {self.error}")
        with self.cond:
            self.state = "done"
            self.cond.notify_all()
        self._serve_until_closed()

    def _build(self) -> None:
        for twin in self.twins:
            state = start_training(self.configs[twin], len(self.data.train))
            state.on_step = self._recorder(twin)
            self.states[twin] = state
        self.drift_x = self.data.validation.x[:DRIFT_IMAGES]
        self.live = LiveTwins(self.config.model, self.states["numpy"].model,
                              self.states["tf"].model if "tf" in self.states else None, self.tf_status)
        if "tf" in self.states:
            self._measure_drift(0)
        self.state = "running"

    def _recorder(self, twin: str) -> Callable[[int, float, int], None]:
        loss = self.loss[twin]

        def record(step: int, value: float, correct: int) -> None:
            loss[step - 1] = value
        return record

    def running_seconds(self) -> float:
        if self.loop_started is None:
            return 0.0
        end = self.loop_ended if self.loop_ended is not None else time.perf_counter()
        return end - self.loop_started - self.paused_seconds

    def _train(self) -> None:
        from threadpoolctl import threadpool_limits

        # With both twins, BLAS runs on one thread: alternating with TensorFlow's threads,
        # OpenBLAS's two threads (its worker spinning between calls) made the NumPy twin's
        # mlp128 steps 2-10x slower on a busy 2-core machine, and no faster on a quieter
        # one (docs/performance.md). A conv model's batch split is set when it is built.
        limit = threadpool_limits(limits=1, user_api="blas") if len(self.twins) == 2 else None
        self.loop_started = time.perf_counter()
        try:
            self._steps()
        finally:
            self.loop_ended = time.perf_counter()
            if limit is not None:
                limit.restore_original_limits()

    def _steps(self) -> None:
        next_drift = 0.0  # perf_counter time of the next drift measurement
        for step in range(1, self.config.steps + 1):
            if (self.jobs or self.pause_requested or self.stop_requested) and not self._gate():
                return
            for twin in self.twins:
                state = self.states[twin]
                started = time.perf_counter()
                state.start_steps()
                take_step(self.configs[twin], state, self.data, step)
                state.stop_steps()
                self.seconds[twin][step - 1] = time.perf_counter() - started
            now = time.perf_counter()
            self.finished_at[step - 1] = now
            self.step = step
            if len(self.twins) == 2 and (now >= next_drift or step == self.config.steps):
                self._measure_drift(step)
                cost = time.perf_counter() - now
                next_drift = now + cost + cost / DRIFT_BUDGET

    def _gate(self) -> bool:
        """Between two steps: run waiting jobs, hold while paused; False to stop."""
        while True:
            self._run_jobs()
            with self.cond:
                if self.stop_requested:
                    return False
                if self.single_steps:
                    self.single_steps -= 1
                    return True
                if not self.pause_requested:
                    self.state = "running"
                    return True
                if self.state != "paused":
                    self.state = "paused"
                    self.cond.notify_all()
                if not self.jobs:
                    waited = time.perf_counter()
                    self.cond.wait(0.5)
                    self.paused_seconds += time.perf_counter() - waited

    def _run_jobs(self) -> None:
        while self.jobs:
            fn, future = self.jobs.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the request that asked
                    future.set_exception(exc)

    def _serve_until_closed(self) -> None:
        """After the run: answer requests (predictions on the trained weights) until closed."""
        while True:
            self._run_jobs()
            with self.cond:
                if self.closing:
                    break
                if not self.jobs:
                    self.cond.wait(0.5)
        with self.cond:  # a request that came in meanwhile must not wait forever
            while self.jobs:
                self.jobs.popleft()[1].cancel()

    def _measure_drift(self, step: int) -> None:
        numpy_model, tf_model = self.states["numpy"].model, self.states["tf"].model
        numpy_params, tf_params = numpy_model.params, tf_model.params
        values = {name: relative_drift(numpy_params[name], tf_params[name]) for name in numpy_params}
        values["logits"] = relative_drift(numpy_model.logits(self.drift_x), tf_model.logits(self.drift_x))
        for name, value in values.items():
            self.drift.setdefault(name, []).append((step, value))

    def _save(self) -> None:
        """Write each twin's run folder (and, if stopped early, its checkpoint)."""
        if self.step == 0:
            self.log("twinnet watch: stopped before the first step; nothing to save")
            return
        with self.cond:
            self.state = "saving"
            self.cond.notify_all()
        finished = self.step == self.config.steps
        self.stopped_at = None if finished else self.step
        for twin in self.twins:
            config, state, folder = self.configs[twin], self.states[twin], self.out / twin
            metrics = run_metrics(config, state, self.data, SPLITS, None)
            if finished:
                finish_run(folder, config, state, metrics, None, lambda: None)
            else:
                write_run(folder, state.model.params, {**metrics, "stopped_at_step": self.step})
                save_training(folder / CHECKPOINT_NAME, config, state)
            self.saved[twin] = str(folder)
        if finished:
            self.log(f"twinnet watch: done: {self.step} steps; saved {', '.join(self.saved.values())}")
        else:
            self.log(f"twinnet watch: stopped after step {self.step} of {self.config.steps}; saved "
                     f"{', '.join(self.saved.values())}; continue a twin with: twinnet train --resume "
                     f"{self.saved['numpy']}")

    # --- what the page reads -----------------------------------------------------------------

    def steps_per_second(self, twin: str, n: int) -> float | None:
        """A twin's own rate (its step time alone) over its last RATE_WINDOW steps."""
        seconds = float(np.sum(self.seconds[twin][max(0, n - RATE_WINDOW):n], dtype=np.float64))
        return min(n, RATE_WINDOW) / seconds if seconds > 0 else None

    def lockstep_rate(self, n: int) -> float | None:
        """Lockstep steps per second over the last second of steps (0 when paused)."""
        if n == 0 or self.state != "running":
            return 0.0 if n else None
        now = time.perf_counter()
        recent = n - int(np.searchsorted(self.finished_at[:n], now - 1.0))
        return float(recent)

    def summary(self, points: int = WIRE_POINTS) -> dict[str, Any]:
        """``GET /api/run``: the run as the page shows it, each series thinned to at most
        about ``points`` points (see docs/usage.md for the fields)."""
        n = self.step  # read once: the trainer goes on meanwhile
        history: dict[str, Any] = {}
        indices = thin_indices(n, points)
        for twin in self.twins:
            loss = self.loss[twin][:n]
            curves = self.states[twin].curves if twin in self.states else None
            m = len(curves.val_accuracy) if curves else 0
            history[twin] = {
                "step": (indices + 1).tolist(),
                "loss": np.round(loss[indices].astype(np.float64), 5).tolist(),
                "smoothed": np.round(smoothed(loss, self.window)[indices], 5).tolist(),
                "val_step": curves.step[:m] if curves else [],
                "val_accuracy": curves.val_accuracy[:m] if curves else [],
                "steps_per_second": self.steps_per_second(twin, n),
                "seconds": float(np.sum(self.seconds[twin][:n], dtype=np.float64)),
            }
        drift = {}
        for name, series in list(self.drift.items()):
            series = series[:]  # a snapshot; the trainer appends
            drift[name] = [[series[i][0], float(f"{series[i][1]:.4g}")]
                           for i in thin_indices(len(series), points)]
        return {
            "model": model_name(self.config.model), "spec": self.config.model,
            "step": n, "steps": self.config.steps, "state": self.state,
            "settings": {key: value for key, value in asdict(self.config).items()
                         if key not in ("model", "backend")},
            "twins": list(self.twins), "tf_status": self.tf_status,
            "steps_per_second": self.lockstep_rate(n), "running_seconds": self.running_seconds(),
            "smoothing_window": self.window, "drift_images": DRIFT_IMAGES,
            "history": history, "drift": drift,
            "saved": self.saved or None, "stopped_at_step": self.stopped_at, "error": self.error,
        }

    def layer_weights(self) -> dict[str, Any] | None:
        """The first layer's weights of each twin as int8 images (runs in the trainer)."""
        if self.layer is None:
            return None
        name, size = self.layer
        images = {twin: layer_images(self.states[twin].model.params[name], size, WEIGHT_IMAGES)
                  for twin in self.twins}
        # One scale per image for both twins, so equal weights look equal.
        scale = np.max([np.abs(x).max(axis=(1, 2)) for x in images.values()], axis=0)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        packed = {twin: base64.b64encode(np.round(x / scale[:, None, None] * 127).astype(np.int8).tobytes())
                  .decode("ascii") for twin, x in images.items()}
        answer: dict[str, Any] = {
            "step": self.step, "parameter": name, "count": len(scale), "height": size[0], "width": size[1],
            "scale": np.round(scale.astype(np.float64), 6).tolist(), "twins": packed,
            "max_difference": None, "difference": None}
        if "tf" in images:
            # Where the twins differ, |W_tf - W_numpy| over its own maximum as 0..255: far
            # below what the int8 images can show, so it gets its own picture.
            difference = np.abs(images["tf"] - images["numpy"])
            largest = float(difference.max())
            answer["max_difference"] = largest
            answer["difference"] = base64.b64encode(
                np.round(difference / (largest or 1.0) * 255).astype(np.uint8).tobytes()).decode("ascii")
        return answer


def create_app(run: LiveRun):
    """The Starlette app: the watch page, the run's JSON API and ``POST /api/predict``."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def page(request):
        return FileResponse(STATIC / "watch.html", headers={"Content-Security-Policy": CSP,
                                                            "Cache-Control": "no-cache"})

    async def summary(request):
        raw = request.query_params.get("points", str(WIRE_POINTS))
        points = int(raw) if raw.isdigit() else WIRE_POINTS
        return JSONResponse(run.summary(min(max(points, 2), MAX_WIRE_POINTS)))

    async def in_trainer(fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(run.submit(fn))

    async def weights(request):
        try:
            return JSONResponse(await in_trainer(run.layer_weights))
        except TwinnetError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def control(request):
        action = request.path_params["action"]
        before = run.step
        if action == "pause":
            run.pause()
            await wait_for(lambda: run.state in ("paused", "saving", "done"))
        elif action == "resume":
            run.resume()
            await wait_for(lambda: run.state != "paused" or run.step > before, 2.0)
        elif action == "step":
            if run.state != "paused":
                return JSONResponse({"error": f"the run is {run.state}; pause it first"}, status_code=409)
            run.step_once()
            await wait_for(lambda: run.step > before or run.state != "paused")
        elif action == "stop":
            run.stop()
            await wait_for(lambda: run.state in ("saving", "done"))
        else:
            return JSONResponse({"error": f"no action {action!r}: pause, resume, step or stop"},
                                status_code=404)
        return JSONResponse({"state": run.state, "step": run.step})

    uploads = Uploads()

    async def predict(request):
        data = await upload_or_refusal(request, uploads, "watch")
        if not isinstance(data, bytes):
            return data
        try:
            answer = await in_trainer(lambda: {**run.live.predict(data), "step": run.step})
        except UploadError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except TwinnetError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(answer)

    return Starlette(routes=[
        Route("/", page),
        Route("/api/run", summary),
        Route("/api/run/weights", weights),
        Route("/api/run/{action}", control, methods=["POST"]),
        Route("/api/predict", predict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def tf_availability() -> tuple[bool, str]:
    """(whether the TF twin can train, its status line for the page)."""
    if installed("tensorflow"):
        return True, "ready"
    return False, f"unavailable: TensorFlow is not installed ({install_command('tf')})"


