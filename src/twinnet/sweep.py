"""Learning-rate sweeps: short runs at several rates, ranked by validation accuracy.

Only the training split trains and only the validation split ranks: the test split
is not even evaluated, so it cannot leak into the choice.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from twinnet.config import TrainConfig
from twinnet.parallel import run_jobs
from twinnet.train import DivergenceError, progress_bar, train
from twinnet.util import atomic_path, write_json_atomic

DEFAULT_LRS = {"sgd": (0.03, 0.1, 0.3, 0.5, 1.0), "adam": (0.0003, 0.001, 0.002, 0.005)}
SWEEP_STEPS = 1000  # the default step budget of a sweep's short runs


@dataclass(frozen=True)
class SweepJob:
    """One point of a sweep, as a worker process receives it."""

    config: TrainConfig
    data_dir: str | None


def sweep_point(job: SweepJob) -> dict[str, Any]:
    """Train one short run; its final validation figures, or ``diverged``."""
    from twinnet.data import load_mnist

    config = job.config
    started = time.perf_counter()
    try:
        _, metrics = train(config, load_mnist(job.data_dir), progress=False,
                           final_splits=("validation",))
    except DivergenceError as exc:
        return {"lr": config.lr, "diverged": str(exc), "val_accuracy": 0.0, "val_loss": None,
                "seconds": time.perf_counter() - started}
    validation = metrics["final"]["validation"]
    return {"lr": config.lr, "diverged": None, "val_accuracy": validation["accuracy"],
            "val_loss": validation["loss"], "seconds": time.perf_counter() - started}


def run_sweep(base: TrainConfig, lrs: list[float], workers: int = 2,
              data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``base`` at every rate in ``lrs``; points sorted by rate, plus the chosen rate
    (highest validation accuracy; ties go to the lower validation loss)."""
    jobs = [SweepJob(replace(base, lr=lr), None if data_dir is None else str(data_dir)) for lr in lrs]
    points = []
    with progress_bar(len(jobs), f"sweep {base.model} ({base.backend})", unit="run") as bar:
        for _, point in run_jobs(sweep_point, jobs, workers):
            points.append(point)
            bar.update(1)
    points.sort(key=lambda p: p["lr"])
    best = max(points, key=lambda p: (p["val_accuracy"], -(p["val_loss"] or float("inf"))))
    return {"config": asdict(base), "points": points, "chosen_lr": best["lr"],
            "chosen_val_accuracy": best["val_accuracy"]}


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as an aligned table, best rate marked."""
    config = result["config"]
    lines = [f"{config['model']} ({config['backend']}, {config['optimizer']}, {config['schedule']}, "
             f"{config['steps']} steps): validation accuracy by learning rate",
             f"{'lr':>10}  {'val acc':>8}  {'val loss':>8}  {'seconds':>7}"]
    for point in result["points"]:
        mark = "  <- chosen" if point["lr"] == result["chosen_lr"] else ""
        if point["diverged"]:
            lines.append(f"{point['lr']:>10g}  {'diverged':>8}  {'':>8}  {point['seconds']:>7.1f}")
        else:
            lines.append(f"{point['lr']:>10g}  {point['val_accuracy']:>8.2%}  "
                         f"{point['val_loss']:>8.4f}  {point['seconds']:>7.1f}{mark}")
    lines.append(f"chosen learning rate: {result['chosen_lr']:g} "
                 f"(validation accuracy {result['chosen_val_accuracy']:.2%})")
    return "\n".join(lines)


def plot_sweep(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Validation accuracy against learning rate (log axis), chosen rate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result["config"]
    ok = [p for p in result["points"] if not p["diverged"]]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.plot([p["lr"] for p in ok], [p["val_accuracy"] * 100 for p in ok], "o-")
    ax.axvline(result["chosen_lr"], color="grey", linestyle="--", label=f"chosen {result['chosen_lr']:g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation accuracy (%)",
           title=f"{config['model']} ({config['backend']}, {config['optimizer']}, "
                 f"{config['steps']} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_sweep(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``<model>-<backend>.json`` and ``.png`` into ``out_dir``; returns the JSON path."""
    config = result["config"]
    stem = Path(out_dir) / f"{config['model']}-{config['backend']}-{config['optimizer']}"
    write_json_atomic(stem.with_suffix(".json"), result)
    plot_sweep(result, stem.with_suffix(".png"))
    return stem.with_suffix(".json")
