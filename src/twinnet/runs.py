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
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.config import TrainConfig
from twinnet.errors import TwinnetError
from twinnet.models import NAMED_MODELS, count_params, is_spec_file, model_name, spec_document
from twinnet.util import (
    is_int,
    is_number,
    make_output_folder,
    open_regular_file,
    os_reason,
    write_json_atomic,
)
from twinnet.version import __version__
from twinnet.weights import (
    META_MAX_BYTES,
    SPEC_KEY,
    SPEC_MAX_MEMBERS,
    SPEC_MAX_TOTAL_BYTES,
    parse_meta,
    read_npz,
    save_weights,
)

RUN_FILES = ("weights.npz", "metrics.json", "curves.png", "confusion.png")
LOCK_NAME = ".lock"
STAGING_NAME = ".incoming"
PLOTS_BYTES = 4 << 20  # curves.png and confusion.png with room to spare


# What a name in a file or folder name may hold: a spec's ``name`` is anyone's text.
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(model: str) -> str:
    """The name of ``model`` as one component of a file or folder name, never ``.``, ``..``
    or hidden: ``models.model_name`` (a built-in's own, a spec file's ``name`` or stem made
    a plain word: ``../../etc/x`` -> ``etc_x``, ``/some/absolute/x`` -> ``some_absolute_x``),
    checked again here. The one place run folders, sweep files, plots and TensorBoard runs
    get a model's name from.

    TwinnetError, one line, for a spec file whose name is a built-in model's: its runs
    would take that model's folders (``runs/linear-numpy``).
    """
    name = model_name(model)
    if not name or UNSAFE_CHARACTERS.search(name) or name.startswith(("-", "_")):
        raise TwinnetError(f"{model}: its name {name!r} cannot name a folder")  # model_name's guarantee
    if name in NAMED_MODELS and model not in NAMED_MODELS:
        raise TwinnetError(f"{model}: its name {name!r} is the built-in model {name}'s, whose runs it "
                           "would replace; give the spec another name (name = \"...\")")
    return name


def default_run_dir(config: TrainConfig) -> Path:
    """Where ``twinnet train`` writes without ``--out``: ``runs/MODEL-BACKEND``, MODEL the
    model's ``safe_name``: always one folder inside ``runs/``."""
    return Path("runs") / f"{safe_name(config.model)}-{config.backend}"


def run_owner(directory: str | os.PathLike) -> tuple[str, Any] | None:
    """(model name, spec table or None) of the finished run in ``directory``, read from its
    weights' meta alone (bounded: ``weights.read_npz``); None where there is no run, or
    none that can be read."""
    path = Path(directory) / "weights.npz"
    if not path.is_file():
        return None

    def limit(key: str) -> int | None:
        return META_MAX_BYTES if key == "meta" else SPEC_MAX_TOTAL_BYTES if SPEC_KEY.fullmatch(key) else None

    try:
        meta = parse_meta(read_npz(path, str(path), limit, max_total_bytes=SPEC_MAX_TOTAL_BYTES,
                                   max_members=SPEC_MAX_MEMBERS, only="meta").get("meta"), str(path))
    except TwinnetError:
        return None
    return str(meta.get("model")), meta.get("spec")


def check_run_owner(directory: str | os.PathLike, model: str) -> None:
    """TwinnetError, one line, when ``directory`` holds the finished run of another model
    than ``model``: another name, or a spec of the same name with other layers (a built-in
    model's run holds no spec). A run is never replaced by another model's silently;
    ``train --force`` says to replace it."""
    owner = run_owner(directory)
    if owner is None:
        return
    ours = (model_name(model), spec_document(model) if is_spec_file(model) else None)
    if owner != ours:
        what = (f"the run of another spec named {owner[0]!r}" if owner[0] == ours[0] and owner[1] is not None
                else f"a run of the built-in model {owner[0]}" if owner[1] is None
                else f"a run of the model {owner[0]!r}")
        raise TwinnetError(f"{directory} holds {what}, not of {model}; write elsewhere with --out DIR, "
                           "or replace it with --force")


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


def check_run_dir(directory: str | os.PathLike) -> None:
    """Refuse, before any training, a run folder that a finished run could not be written
    into: the folder (or the nearest part of its path that exists) is a file, or is a
    symbolic link; one of the run's files (RUN_FILES, the checkpoint, the lock) is a
    folder, a link or anything else than a regular file; ``.incoming`` is not a folder.
    TwinnetError, one line naming the path.

    A symbolic link is refused rather than followed: a run folder is written, replaced
    and cleaned by twinnet, and doing that through a link would touch wherever it points.
    Links above the run folder (a ``runs`` that is a link to a larger disk) are followed.
    """
    from twinnet.checkpoint import CHECKPOINT_NAME

    folder = Path(directory)
    try:
        if folder.is_symlink():
            raise TwinnetError(f"{folder}: is a symbolic link (to {os.readlink(folder)}); a run "
                               "folder must be a real folder: remove the link, or name its target")
        existing = folder
        while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # a name too long, a folder that cannot be searched
        raise TwinnetError(f"{folder}: cannot be used as a run folder ({os_reason(exc)})") from None
    if existing.exists() and not existing.is_dir():
        what = "the run folder" if existing == folder else f"a part of the path of {folder}"
        raise TwinnetError(f"{existing}: is a file, but {what} must be a folder")
    if existing != folder:
        return
    for name in (*RUN_FILES, CHECKPOINT_NAME, LOCK_NAME, STAGING_NAME):
        path = folder / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise TwinnetError(f"{path}: cannot be checked ({os_reason(exc)})") from None
        wanted = stat.S_ISDIR if name == STAGING_NAME else stat.S_ISREG
        if not wanted(mode):
            kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
                    else "a file" if stat.S_ISREG(mode) else "not a regular file")
            expected = "a folder" if name == STAGING_NAME else "a file"
            raise TwinnetError(f"{path}: is {kind}, where the run keeps {expected}; move it away "
                               "before training")


def check_run_output(directory: str | os.PathLike, config: TrainConfig) -> None:
    """Everything ``twinnet train`` checks of its run folder before any work:
    ``check_output_dir`` with room for ``run_bytes(config)``, then ``check_run_dir``."""
    check_output_dir(directory, run_bytes(config))
    check_run_dir(directory)


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
    title = f"{metrics.get('model_name', config['model'])} trained by the {config['backend']} twin"
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


# A metrics.json is a few KB (about 1 MB with a curve point at every one of 10,000 steps);
# anything larger is not read (a reused run is read back by every report).
METRICS_MAX_BYTES = 16 << 20
CURVE_KEYS = ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
FINAL_KEYS = ("loss", "accuracy", "correct", "count")


def finished_metrics(directory: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of the run in ``directory`` if it finished with exactly ``config``, its
    metrics.json is whole (``check_metrics``) and its weights.npz is the file its
    metrics.json describes (same SHA-256), else None."""
    return read_finished(directory, config)[0]


def read_finished(directory: str | os.PathLike,
                  config: TrainConfig) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, None) for a finished run of ``config`` in ``directory`` (as
    ``finished_metrics``); (None, None) where there is none, or one of another
    configuration; (None, reason) for a run of this configuration that is damaged: the
    reason names metrics.json (or weights.npz) and the key at fault, on one line."""
    path = Path(directory) / "metrics.json"
    try:
        with open_regular_file(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > METRICS_MAX_BYTES:
                text = None
            else:
                text = fh.read(METRICS_MAX_BYTES + 1).decode("utf-8")
    except TwinnetError:  # missing, a folder, unreadable: no finished run here
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: unreadable ({exc})"[:300]
    if text is None:
        return None, f"{path}: {size:,} bytes, more than the {METRICS_MAX_BYTES:,} a run's metrics take"
    try:
        metrics = json.loads(text)
    except RecursionError:
        return None, f"{path}: nested too deeply to be a run's metrics"
    except ValueError as exc:
        return None, f"{path}: not valid JSON ({' '.join(str(exc).split())})"[:300]
    if not isinstance(metrics, dict) or metrics.get("config") != asdict(config):
        return None, None
    try:
        check_metrics(metrics)
    except ValueError as exc:
        return None, f"{path}: {exc}"[:300]
    try:
        if metrics["weights_sha256"] != file_sha256(Path(directory) / "weights.npz"):
            return None, f"{Path(directory) / 'weights.npz'}: not the file its metrics.json describes"
    except TwinnetError as exc:
        return None, str(exc)
    return metrics, None


def check_metrics(metrics: dict[str, Any]) -> None:
    """ValueError ("KEY: what is wrong") unless ``metrics`` has everything the report and
    TensorBoard read from a run's metrics.json, of the right types: ``final`` (train,
    validation, test: loss and accuracy; test also correct and count), ``confusion_matrix`` (10x10
    counts whose trace and total agree with the test figures), ``curves`` (lists of one
    length, at least one point), the seconds, ``environment`` and ``weights_sha256``."""
    final = metrics.get("final")
    if not isinstance(final, dict):
        raise ValueError(f"final: not a table ({type(final).__name__})")
    for split in ("train", "validation", "test"):
        figures = final.get(split)
        if not isinstance(figures, dict):
            raise ValueError(f"final.{split}: missing or not a table")
        for key in FINAL_KEYS if split == "test" else FINAL_KEYS[:2]:
            value = figures.get(key)
            ok = is_int(value) and value >= 0 if key in ("correct", "count") else is_number(value)
            if not ok or (key == "accuracy" and not 0 <= value <= 1):
                raise ValueError(f"final.{split}.{key}: not a valid figure ({value!r})"[:200])
    check_confusion(metrics["confusion_matrix"] if "confusion_matrix" in metrics else None, final["test"])
    curves = metrics.get("curves")
    if not isinstance(curves, dict) or any(key not in curves for key in CURVE_KEYS):
        raise ValueError(f"curves: not a table of {', '.join(CURVE_KEYS)}")
    lengths = {len(curves[key]) if isinstance(curves[key], list) else -1 for key in CURVE_KEYS}
    if len(lengths) != 1 or lengths & {-1, 0}:
        raise ValueError("curves: not lists of one length with at least one point")
    if not all(is_int(v) for v in curves["step"]) or not all(
            is_number(v) for key in CURVE_KEYS[1:] for v in curves[key]):
        raise ValueError("curves: not integer steps and finite numbers")
    for key in ("train_seconds", "wall_seconds"):
        if not is_number(metrics.get(key)) or metrics[key] < 0:
            raise ValueError(f"{key}: not a number of seconds ({metrics.get(key)!r})"[:200])
    if not isinstance(metrics.get("environment"), dict):
        raise ValueError("environment: not a table")
    if not isinstance(metrics.get("weights_sha256"), str):
        raise ValueError("weights_sha256: missing")


def check_confusion(confusion: Any, test: dict[str, Any]) -> None:
    """ValueError unless ``confusion`` is 10x10 non-negative counts whose trace and total
    agree with the test figures ``test`` (correct, count, accuracy)."""
    if not (isinstance(confusion, list) and len(confusion) == 10 and all(
            isinstance(row, list) and len(row) == 10 and all(is_int(n) and n >= 0 for n in row)
            for row in confusion)):
        raise ValueError("confusion_matrix: not 10 rows of 10 counts")
    trace = sum(confusion[i][i] for i in range(10))
    total = sum(map(sum, confusion))
    if total != test["count"] or trace != test["correct"] or test["accuracy"] != trace / max(total, 1):
        raise ValueError(f"final.test.accuracy: {test['accuracy']} disagrees with its confusion matrix "
                         f"({trace}/{total})")
