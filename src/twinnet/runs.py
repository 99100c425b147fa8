"""Run folders: what a finished training leaves behind, and reading it back.

A run folder holds ``weights.npz`` (the one weights format, ``twinnet.weights``),
``metrics.json`` (``twinnet.train.run_metrics``), ``curves.png`` and
``confusion.png``. Each file is written atomically and ``metrics.json`` last, so its
presence means the run is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from twinnet import __version__
from twinnet.backend import Backend
from twinnet.config import TrainConfig
from twinnet.util import write_json_atomic
from twinnet.weights import save_weights

RUN_FILES = ("weights.npz", "metrics.json", "curves.png", "confusion.png")


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


def write_run(out_dir: str | os.PathLike, model: Backend, metrics: dict[str, Any]) -> None:
    """Write the run folder's files (RUN_FILES) into ``out_dir``, metrics.json last."""
    write_run_params(out_dir, model.params, metrics)


def write_run_params(out_dir: str | os.PathLike, params: dict[str, np.ndarray],
                     metrics: dict[str, Any]) -> None:
    """``write_run`` from the parameters (canonical names -> arrays) instead of a model:
    what a worker on another machine sends back."""
    from twinnet.plots import plot_confusion, plot_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(**metrics["config"])
    title = f"{config.model} trained by the {config.backend} twin"
    save_weights(out / "weights.npz", config.model, params, weights_meta(config))
    plot_curves(metrics["curves"], title, out / "curves.png")
    plot_confusion(metrics["confusion_matrix"], title, out / "confusion.png")
    write_json_atomic(out / "metrics.json", metrics)


def finished_metrics(directory: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of the run in ``directory`` if it finished with exactly ``config``, else None."""
    directory = Path(directory)
    try:
        metrics = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("config") != asdict(config) or not (directory / "weights.npz").is_file():
        return None
    return metrics
