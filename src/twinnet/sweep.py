"""Learning-rate sweeps: short runs at several rates (and seeds), ranked by validation accuracy.

Only the training split trains and only the validation split ranks: the test split
is not even evaluated, so it cannot leak into the choice.

Every finished point (one rate, one seed) is written at once to
``OUT/MODEL-BACKEND-OPTIMIZER.points/lrLR-seedSEED.json`` with its configuration; a rerun
reuses the points whose configuration is unchanged, so an interrupted sweep (Ctrl-C, a
lost machine) keeps what it finished.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from twinnet.config import TrainConfig
from twinnet.models import model_name
from twinnet.parallel import run_jobs
from twinnet.runs import safe_name
from twinnet.training import DivergenceError, check_training_memory, progress_bar, train
from twinnet.util import atomic_path, write_json_atomic

DEFAULT_LRS = {"sgd": (0.03, 0.1, 0.3, 0.5, 1.0), "adam": (0.0003, 0.001, 0.002, 0.005)}
SWEEP_STEPS = 1000  # the default step budget of a sweep's short runs


@dataclass(frozen=True)
class SweepJob:
    """One point of a sweep (one rate, one seed), as a worker receives it."""

    config: TrainConfig
    data_dir: str | None
    threads: int | None = None  # set by twinnet.parallel.run_jobs

    @property
    def name(self) -> str:
        return f"lr {self.config.lr:g} seed {self.config.seed}"


def sweep_point(job: SweepJob) -> dict[str, Any]:
    """Train one short run; its final validation figures, or ``diverged``."""
    from twinnet.data import load_mnist

    config = job.config
    started = time.perf_counter()
    try:
        _, metrics = train(config, load_mnist(job.data_dir), progress=False,
                           final_splits=("validation",), threads=job.threads)
    except DivergenceError as exc:
        return {"lr": config.lr, "seed": config.seed, "diverged": str(exc), "val_accuracy": 0.0,
                "val_loss": None, "seconds": time.perf_counter() - started}
    validation = metrics["final"]["validation"]
    return {"lr": config.lr, "seed": config.seed, "diverged": None,
            "val_accuracy": validation["accuracy"], "val_loss": validation["loss"],
            "seconds": time.perf_counter() - started}


def sweep_stem(config: TrainConfig, out_dir: str | os.PathLike) -> Path:
    """``OUT/MODEL-BACKEND-OPTIMIZER``: the sweep's files are this plus a suffix."""
    return Path(out_dir) / f"{safe_name(config.model)}-{config.backend}-{config.optimizer}"


def point_path(points_dir: Path, config: TrainConfig) -> Path:
    return points_dir / f"lr{config.lr:g}-seed{config.seed}.json"


def finished_point(points_dir: Path | None, config: TrainConfig) -> dict[str, Any] | None:
    """The point saved for exactly ``config``, if any (a changed setting trains again)."""
    if points_dir is None:
        return None
    try:
        saved = json.loads(point_path(points_dir, config).read_text())
    except (OSError, ValueError):
        return None
    return saved["point"] if isinstance(saved, dict) and saved.get("config") == asdict(config) else None


def rate_summary(lr: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's figures over its seeds: means, the standard deviation of the validation
    accuracy (0 for one seed), and each seed's point. A diverged seed counts as 0 accuracy
    and marks the rate as diverged."""
    runs = sorted(runs, key=lambda p: p["seed"])
    diverged = next((p["diverged"] for p in runs if p["diverged"]), None)
    accuracies = [p["val_accuracy"] for p in runs]
    return {"lr": lr, "diverged": diverged, "val_accuracy": statistics.fmean(accuracies),
            "val_accuracy_std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
            "val_loss": None if diverged else statistics.fmean(p["val_loss"] for p in runs),
            "seconds": sum(p["seconds"] for p in runs), "seeds": runs}


def run_sweep(base: TrainConfig, lrs: list[float], workers: int = 2,
              data_dir: str | os.PathLike | None = None, seeds: int = 1,
              out_dir: str | os.PathLike | None = None, engine: str = "local",
              address: str | None = None) -> dict[str, Any]:
    """Run ``base`` at every rate in ``lrs`` with seeds ``base.seed`` .. ``base.seed + seeds - 1``.

    Returns the rates sorted by rate (``rate_summary``) and the chosen rate: the highest
    mean validation accuracy, ties to the lower mean validation loss. With ``out_dir``,
    each finished point is saved there at once and saved points are reused.
    """
    lrs = sorted(set(lrs))
    # Each worker trains one run at a time, on its share of the cores; before any starts.
    check_training_memory(base, copies=workers, threads=max(1, (os.cpu_count() or 1) // workers))
    points_dir = None if out_dir is None else sweep_stem(base, out_dir).with_suffix(".points")
    configs = [replace(base, lr=lr, seed=base.seed + k) for lr in lrs for k in range(seeds)]
    done = {i: point for i, config in enumerate(configs)
            if (point := finished_point(points_dir, config)) is not None}
    jobs = [SweepJob(config, None if data_dir is None else str(data_dir))
            for i, config in enumerate(configs) if i not in done]
    if done:
        print(f"reusing {len(done)} finished sweep point(s) from {points_dir}")
    points = list(done.values())
    with progress_bar(len(jobs), f"sweep {model_name(base.model)} ({base.backend})", unit="run") as bar:
        for job, point in run_jobs(sweep_point, jobs, workers, engine, address):
            if points_dir is not None:
                write_json_atomic(point_path(points_dir, job.config),
                                  {"config": asdict(job.config), "point": point})
            points.append(point)
            bar.update(1)
    rates = [rate_summary(lr, [p for p in points if p["lr"] == lr]) for lr in lrs]
    best = max(rates, key=lambda p: (p["val_accuracy"], -(p["val_loss"] or float("inf"))))
    return {"config": asdict(base), "seeds": seeds, "points": rates, "chosen_lr": best["lr"],
            "chosen_val_accuracy": best["val_accuracy"]}


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as an aligned table, best rate marked."""
    config = result["config"]
    seeds = result.get("seeds", 1)
    lines = [f"{model_name(config['model'])} ({config['backend']}, {config['optimizer']}, "
             f"{config['schedule']}, {config['steps']} steps, {seeds} seed(s)): "
             "validation accuracy by learning rate"
             + (" (mean and standard deviation over the seeds)" if seeds > 1 else ""),
             f"{'lr':>10}  {'val acc':>8}  {'std':>6}  {'val loss':>8}  {'seconds':>7}"]
    for point in result["points"]:
        mark = "  <- chosen" if point["lr"] == result["chosen_lr"] else ""
        if point["diverged"]:
            lines.append(f"{point['lr']:>10g}  {'diverged':>8}  {'':>6}  {'':>8}  {point['seconds']:>7.1f}")
        else:
            std = f"{point['val_accuracy_std']:.2%}" if seeds > 1 else ""
            lines.append(f"{point['lr']:>10g}  {point['val_accuracy']:>8.2%}  {std:>6}  "
                         f"{point['val_loss']:>8.4f}  {point['seconds']:>7.1f}{mark}")
    lines.append(f"chosen learning rate: {result['chosen_lr']:g} "
                 f"(mean validation accuracy {result['chosen_val_accuracy']:.2%})")
    return "\n".join(lines)


def plot_sweep(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Validation accuracy against learning rate (log axis), chosen rate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result["config"]
    ok = [p for p in result["points"] if not p["diverged"]]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.errorbar([p["lr"] for p in ok], [p["val_accuracy"] * 100 for p in ok],
                yerr=[p.get("val_accuracy_std", 0.0) * 100 for p in ok], fmt="o-", capsize=3)
    ax.axvline(result["chosen_lr"], color="grey", linestyle="--", label=f"chosen {result['chosen_lr']:g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation accuracy (%)",
           title=f"{model_name(config['model'])} ({config['backend']}, {config['optimizer']}, "
                 f"{config['steps']} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_sweep(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``MODEL-BACKEND-OPTIMIZER.json`` and ``.png`` into ``out_dir``; returns the JSON path."""
    stem = sweep_stem(TrainConfig(**result["config"]), out_dir)
    write_json_atomic(stem.with_suffix(".json"), result)
    plot_sweep(result, stem.with_suffix(".png"))
    return stem.with_suffix(".json")
