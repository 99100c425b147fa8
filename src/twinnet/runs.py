"""Run folders: what a finished training leaves behind, and reading it back.

A run folder holds ``weights.npz`` (the one weights format, ``twinnet.weights``),
``metrics.json`` (``twinnet.training.run_metrics`` plus ``weights_sha256``, the SHA-256 of
the weights file it describes), ``curves.png`` and ``confusion.png``. While a run is
going on it also holds ``.lock`` (the writer's PID; see ``lock_run_dir``) and, when
interrupted, ``checkpoint.npz``.

Nothing is ever mixed: the files are first written complete into ``.incoming/``, then
the old ``metrics.json`` is removed, the new files are renamed into place, and
``metrics.json`` comes last. A folder with ``metrics.json`` whose hash matches its
``weights.npz`` therefore holds one complete run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from twinnet import __version__
from twinnet.config import TrainConfig
from twinnet.errors import TwinnetError
from twinnet.models import count_params
from twinnet.util import make_output_folder, open_regular_file, os_reason, write_json_atomic
from twinnet.weights import save_weights

RUN_FILES = ("weights.npz", "metrics.json", "curves.png", "confusion.png")
LOCK_NAME = ".lock"
STAGING_NAME = ".incoming"
PLOTS_BYTES = 4 << 20  # curves.png and confusion.png with room to spare


def default_run_dir(config: TrainConfig) -> Path:
    """Where ``twinnet train`` writes without ``--out``: ``runs/MODEL-BACKEND``."""
    return Path("runs") / f"{config.model}-{config.backend}"


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


def run_bytes(config: TrainConfig) -> int:
    """Disk space a run of ``config`` may need at once, generously: the new and the old
    weights (the old stay until the new replace them), a checkpoint (parameters, Adam's
    two slots, data order) and the plots."""
    return 4 * count_params(config.model) * 6 + 55_000 * 8 + PLOTS_BYTES


def check_output_dir(directory: str | os.PathLike, needed_bytes: int) -> None:
    """Create ``directory`` if needed and make sure a run can be written into it, before
    any work: it must be a folder (not a file, not under one), writable, its name not too
    long, with at least ``needed_bytes`` free. TwinnetError (one line naming it) if not."""
    out = make_output_folder(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
        stats = os.statvfs(out)
    except OSError as exc:
        raise TwinnetError(f"{out}: cannot write there ({os_reason(exc)})") from None
    free = stats.f_bavail * stats.f_frsize
    if free < needed_bytes:
        raise TwinnetError(f"{out}: not enough free space: {free / 1e6:.1f} MB free, the outputs "
                           f"need about {needed_bytes / 1e6:.1f} MB")


@contextmanager
def lock_run_dir(directory: str | os.PathLike) -> Iterator[None]:
    """Hold ``directory/.lock`` (an exclusive flock, the file holding our PID) for the
    body; TwinnetError naming the holder's PID at once if another process holds it.

    The kernel drops the lock when the holder dies, so a killed run never blocks the
    folder. The file is removed on release, while still locked; an acquirer checks that
    the file it locked is still the one at the path, so two processes never both hold it.
    """
    path = Path(directory) / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TwinnetError(f"{path}: cannot create the lock ({os_reason(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise TwinnetError(f"{directory}: in use by another twinnet process (PID {holder}); "
                               "wait for it to finish or write elsewhere with --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder removed meanwhile: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with suppress(OSError):
            path.unlink()
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a regular file; FileAccessError (an OSError-free TwinnetError) if
    the path is no readable regular file."""
    digest = hashlib.sha256()
    with open_regular_file(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def draw_run_plots(directory: str | os.PathLike, metrics: dict[str, Any],
                   check: Callable[[], None] | None = None) -> None:
    """Draw a run's curves.png and confusion.png into ``directory`` from its metrics.json
    dict, calling ``check()`` after each (see ``write_run``)."""
    from twinnet.plots import plot_confusion, plot_curves

    config, check = metrics["config"], check or (lambda: None)
    title = f"{config['model']} trained by the {config['backend']} twin"
    plot_curves(metrics["curves"], title, Path(directory) / "curves.png")
    check()
    plot_confusion(metrics["confusion_matrix"], title, Path(directory) / "confusion.png")
    check()


def write_run(out_dir: str | os.PathLike, params: dict[str, np.ndarray], metrics: dict[str, Any],
              check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Write the run folder's files (RUN_FILES) into ``out_dir`` from the run's parameters
    (canonical names -> arrays: a model's ``params``, or what a worker on another machine
    sent back); returns the metrics as written (with ``weights_sha256``).

    Everything is first written into ``out_dir/.incoming``; ``check()`` is called after
    each file (it may raise, e.g. on Ctrl-C) and any failure there leaves ``out_dir`` as
    it was. Then the old metrics.json goes, the new files are renamed in, metrics.json
    last. The caller should hold the folder (``lock_run_dir``) where others may write.
    """
    out = Path(out_dir)
    staging = out / STAGING_NAME
    config = TrainConfig(**metrics["config"])
    check = check or (lambda: None)
    shutil.rmtree(staging, ignore_errors=True)  # a killed writer's
    try:
        save_weights(staging / "weights.npz", config.model, params, weights_meta(config))
        metrics = {**metrics, "weights_sha256": file_sha256(staging / "weights.npz")}
        check()
        draw_run_plots(staging, metrics, check)
        write_json_atomic(staging / "metrics.json", metrics)
    except TwinnetError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # Name the files where they belong; the staging folder is ours alone.
        raise type(exc)(str(exc).replace(f"{staging}{os.sep}", f"{out}{os.sep}")) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (out / "metrics.json").unlink(missing_ok=True)
    for name in ("weights.npz", "curves.png", "confusion.png", "metrics.json"):
        os.replace(staging / name, out / name)
    staging.rmdir()
    return metrics


def finished_metrics(directory: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of the run in ``directory`` if it finished with exactly ``config`` and
    its weights.npz is the file its metrics.json describes (same SHA-256), else None."""
    directory = Path(directory)
    try:
        metrics = json.loads((directory / "metrics.json").read_text())
        if not isinstance(metrics, dict) or metrics.get("config") != asdict(config):
            return None
        if metrics.get("weights_sha256") != file_sha256(directory / "weights.npz"):
            return None
    except (OSError, ValueError, TwinnetError):
        return None
    return metrics
