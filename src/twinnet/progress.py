"""Progress bars for training runs, sweeps and reports: tqdm in a terminal, and in a
Jupyter notebook one widget per run (with ipywidgets) or else one line per run; and a
report's board (``JobsBoard``): one status line for the runs its workers train.

tqdm's own choice for notebooks (``tqdm.auto``) falls back, without ipywidgets, to the
terminal bar plus an "IProgress not found" warning, and the terminal bar redrawn into a
notebook's output leaves hundreds of stderr chunks in the saved file. So without
ipywidgets a notebook gets ``FinalLine``: nothing while the run goes, its final line
(steps, time, rate, last loss) when it ends.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm.std import tqdm


class FinalLine(tqdm):
    """A tqdm that draws nothing while it runs and writes its final state as one line when
    closed; for outputs that keep every redraw (a notebook's saved stderr)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        return True  # no redraws

    def close(self) -> None:
        if not self.disable and self.leave:
            self.fp.write(self.format_meter(**{**self.format_dict, "ncols": None}))  # a 10-character bar
        super().close()  # ends the line


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter kernel (not a terminal IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(total: int, description: str, unit: str = "step", enabled: bool | None = None) -> Any:
    """A progress bar of ``total`` ``unit``s on stderr, or in a notebook's output.

    Shown when ``enabled`` is True; by default (None) only in a terminal or a notebook,
    never into a file or a pipe. Inside ``steps_into(path)`` it draws nothing and writes
    its steps to ``path`` instead (``StepsBar``)."""
    if _steps_file is not None:  # a report's worker: the steps go to the driver's board
        return StepsBar(_steps_file, total, desc=description, unit=unit)
    notebook = in_notebook()
    if enabled is None:
        enabled = notebook or sys.stderr.isatty()
    if notebook and enabled:
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as widget

            return widget(total=total, desc=description, unit=unit)
        return FinalLine(total=total, desc=description, unit=unit, file=sys.stderr)
    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, disable=not enabled)


# -- a report's jobs: progress across worker processes ------------------------------------
# A worker cannot draw into the driver's terminal without its lines interleaving with the
# other workers', so each training job writes its progress to a small JSON file
# (``JobProgressFile``) and the driver draws one status line for all of them
# (``JobsBoard``). Files, not a queue, because they need nothing shared between the
# processes but a folder, and a job whose file is not there (a Ray worker on another
# machine) just shows no steps. The training loop needs to know nothing of it: inside
# ``steps_into(path)`` its progress bar is a ``StepsBar``, which writes there.

_steps_file: str | None = None  # set by steps_into while a worker runs a report's job


@contextmanager
def steps_into(path: str | os.PathLike | None) -> Iterator[None]:
    """While inside, every ``progress_bar`` writes its steps to ``path`` (nothing with None)."""
    global _steps_file
    previous, _steps_file = _steps_file, None if path is None else str(path)
    try:
        yield
    finally:
        _steps_file = previous


class JobProgressFile:
    """The worker's side: ``update(step)`` writes ``{"step", "steps", "seconds"}`` (seconds
    since this writer was made) to ``path``, atomically (a reader never sees half a file)."""

    def __init__(self, path: str | os.PathLike, steps: int) -> None:
        self.path, self.steps, self.started = Path(path), steps, time.monotonic()
        self.update(0)

    def update(self, step: int) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text(json.dumps({"step": step, "steps": self.steps,
                                             "seconds": time.monotonic() - self.started}))
            os.replace(temporary, self.path)
        except OSError:
            pass  # progress is a courtesy: a full disk must not stop the training


class StepsBar(tqdm):
    """A tqdm that draws nothing: it writes its count to a ``JobProgressFile`` at most once
    a second (tqdm's own ``mininterval``), and once more when closed."""

    def __init__(self, path: str | os.PathLike, total: int, **kwargs: Any) -> None:
        self.steps_file = JobProgressFile(path, total)  # its clock starts with the steps
        super().__init__(total=total, file=io.StringIO(), mininterval=1.0, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        self.steps_file.update(self.n)
        return True


def read_job_progress(path: str | os.PathLike) -> dict[str, float] | None:
    """What ``JobProgressFile`` last wrote to ``path``, or None (not started, or unreadable)."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    keys = ("step", "steps", "seconds")
    ok = isinstance(found, dict) and all(isinstance(found.get(k), (int, float)) for k in keys)
    return found if ok else None


@dataclass
class BoardJob:
    """One job on the board: how messages name it, its steps, its rough work (any unit
    common to all jobs, for the estimate of the time left) and its progress file."""

    name: str
    steps: int
    work: float
    progress_file: str | None = None
    seconds: float | None = None  # set when it finished: its wall time in the worker


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``1 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class JobsBoard:
    """The driver's side: jobs running on ``workers`` workers, shown on ``stream``.

    ``live`` (default: when ``stream`` is a terminal): a status line redrawn every
    ``interval`` seconds by a thread, naming the runs in training with their steps, how
    many are done and an estimate of the time left. Whatever the mode, ``finished(key,
    line)`` prints one line per finished job (above the status line), so a log or a pipe
    gets exactly those. Use as a context manager."""

    def __init__(self, jobs: dict[str, BoardJob], workers: int, stream: TextIO | None = None,
                 live: bool | None = None, interval: float = 1.0) -> None:
        self.jobs, self.workers = jobs, max(1, workers)
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.interval, self.started = interval, time.monotonic()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread: threading.Thread | None = None
        self.shown = 0  # the width of the status line on screen, 0 when none

    def __enter__(self) -> JobsBoard:
        if self.live and self.jobs:
            self.thread = threading.Thread(target=self._draw_every_interval, name="twinnet-board",
                                           daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            self._clear()

    def finished(self, key: str, line: str, seconds: float | None = None) -> None:
        """Job ``key`` is done (in ``seconds`` of its own): print ``line``, numbered."""
        with self.lock:
            self.jobs[key].seconds = seconds if seconds is not None else 0.0
            done = sum(job.seconds is not None for job in self.jobs.values())
            self._clear()
            self.stream.write(f"  [{done}/{len(self.jobs)}] {line}\n")
            self.stream.flush()
            if self.live and done < len(self.jobs):
                self._draw()

    def status(self) -> str:
        """The status line: runs done, the time left, then each running run's progress (the
        line is cut to the terminal's width, so what matters most comes first)."""
        running = []
        for job in self.jobs.values():
            if job.seconds is not None or not job.progress_file:
                continue
            if (found := read_job_progress(job.progress_file)) is not None:
                running.append(f"{job.name} {found['step']:.0f}/{found['steps']:.0f} steps")
        done = sum(job.seconds is not None for job in self.jobs.values())
        left = self.seconds_left()
        when = ("time left: estimating" if left is None else
                f"about {duration(left)} left" if left >= 1 else "finishing")
        return (f"report: {done}/{len(self.jobs)} runs done, {when} "
                f"({duration(time.monotonic() - self.started)} so far); "
                + (f"training {', '.join(running)}" if running else "starting the next run"))

    def seconds_left(self) -> float | None:
        """The time left: the work not yet done at the seconds per unit of work seen so far
        (finished jobs and the done part of running ones), shared among the workers. None
        before any job has made progress."""
        seen_seconds = seen_work = left_work = 0.0
        for job in self.jobs.values():
            if job.seconds is not None:
                seen_seconds, seen_work = seen_seconds + job.seconds, seen_work + job.work
                continue
            found = read_job_progress(job.progress_file) if job.progress_file else None
            fraction = found["step"] / max(1, found["steps"]) if found else 0.0
            if found and fraction > 0:
                seen_seconds, seen_work = seen_seconds + found["seconds"], seen_work + job.work * fraction
            left_work += job.work * (1 - fraction)
        if seen_work <= 0:
            return None
        return left_work * seen_seconds / seen_work / min(self.workers, len(self.jobs))

    def _draw_every_interval(self) -> None:
        wait = 0.0  # the first line at once
        while not self.stop.wait(wait):
            wait = self.interval
            with self.lock:
                if any(job.seconds is None for job in self.jobs.values()):
                    self._draw()

    def _draw(self) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        line = self.status()[:width]
        self.stream.write("\r" + line + " " * max(0, self.shown - len(line)))
        self.stream.flush()
        self.shown = len(line)

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.shown = 0
