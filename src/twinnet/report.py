"""The results report: plan the preset runs, run what is missing, render REPORT.md.

- **Plan**: every preset (``twinnet.presets``) whose run folder holds a finished run of
  its exact configuration is reused; the others become ``RunJob``s, longest first.
- **Run**: the jobs train on workers (``twinnet.parallel``: local processes or Ray), each
  returning its metrics and weights; this process writes the run folders (``twinnet.runs``).
- **Render**: every figure is read from a run's ``metrics.json``, after each run's test
  accuracy is checked against the trace of its confusion matrix. Tables are built from
  column definitions (``COLUMNS``); the prose is in ``report_text.toml``.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from twinnet.config import TrainConfig
from twinnet.environment import environment
from twinnet.errors import TwinnetError
from twinnet.models import DESCRIPTIONS, MODEL_NAMES, count_params, multiply_adds_per_image
from twinnet.parallel import run_jobs
from twinnet.presets import Preset, load_presets, select
from twinnet.runs import finished_metrics, write_run_params
from twinnet.train import SPLITS, progress_bar, train
from twinnet.util import write_text_atomic

TEXT = tomllib.loads(resources.files("twinnet").joinpath("report_text.toml").read_text(encoding="utf-8"))
Metrics = dict[str, Any]  # one run's metrics.json
Cell = Callable[[Preset, "Metrics | None"], str]  # a table cell of a preset and its run, if any


def text(name: str, **values: Any) -> str:
    """The prose ``name`` of report_text.toml with its placeholders filled in."""
    return TEXT[name].format(**values)


# -- plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    """One preset to train, as a worker receives it (it holds no data: the worker loads
    MNIST from ``data_dir`` on its own machine)."""

    preset: Preset
    directory: str  # the run folder the driver writes
    data_dir: str | None
    progress: bool | None  # show a progress bar: None when stderr is a terminal
    threads: int | None = None  # set by twinnet.parallel.run_jobs

    @property
    def name(self) -> str:
        return self.preset.label


def cost(config: TrainConfig) -> int:
    """Rough work of a run, to start the longest first."""
    return multiply_adds_per_image(config.model) * config.steps * config.batch_size


def plan_runs(presets: list[Preset], out: Path, retrain: list[Preset], data_dir: str | None,
              workers: int) -> tuple[dict[str, Metrics], list[RunJob]]:
    """Finished runs to reuse (by preset id) and the jobs to run, longest first.

    Without ``retrain`` every unfinished preset is run. With it (``--only``) exactly the
    presets it names are run, finished or not (after a code change, say); the others
    are only reused, if finished.
    """
    reused: dict[str, Metrics] = {}
    todo = []
    for preset in presets:
        found = None if preset in retrain else finished_metrics(preset.run_dir(out), preset.config)
        if found is not None:
            reused[preset.id] = found
        elif not retrain or preset in retrain:
            todo.append(preset)
    todo.sort(key=lambda p: cost(p.config), reverse=True)
    progress = None if workers <= 1 else False  # bars of parallel workers would interleave
    return reused, [RunJob(p, str(p.run_dir(out)), data_dir, progress) for p in todo]


# -- run -------------------------------------------------------------------------------


def run_job(job: RunJob) -> dict[str, Any]:
    """Train one preset; the worker of ``generate_report``. Returns ``metrics`` (the run's
    metrics.json) and ``params`` (its weights, canonical names -> arrays) for the driver."""
    from twinnet.data import load_mnist

    model, metrics = train(job.preset.config, load_mnist(job.data_dir), progress=job.progress,
                           threads=job.threads)
    return {"metrics": metrics, "params": model.params}


def run_planned(jobs: list[RunJob], workers: int, reused: int, engine: str = "local",
                address: str | None = None) -> dict[str, Metrics]:
    """Run the jobs, ``workers`` at a time (on Ray: as many as the cluster holds), and write
    each run folder as its job returns; their metrics by preset id."""
    if jobs:
        print(f"training {len(jobs)} run(s) with {workers} job(s) on the {engine} engine; "
              f"reusing {reused} finished")
    results = {}
    with progress_bar(len(jobs), "report runs", unit="run", enabled=None if workers > 1 else False) as bar:
        for job, result in run_jobs(run_job, jobs, workers, engine, address):
            metrics = result["metrics"]
            write_run_params(job.directory, result["params"], metrics)
            results[job.preset.id] = metrics
            bar.update(1)
            c = job.preset.config
            print(f"  {job.preset.label} {c.model} ({c.backend}): test accuracy "
                  f"{metrics['final']['test']['accuracy']:.2%} in {metrics['train_seconds']:.0f} s")
    return results


def check_consistent(preset: Preset, metrics: Metrics) -> None:
    """Test accuracy must equal the confusion matrix's trace over the test count."""
    confusion = metrics["confusion_matrix"]
    trace = sum(confusion[i][i] for i in range(len(confusion)))
    total = sum(map(sum, confusion))
    test = metrics["final"]["test"]
    if total != test["count"] or trace != test["correct"] or test["accuracy"] != trace / total:
        raise TwinnetError(f"run {preset.label}: test accuracy {test['accuracy']} disagrees with "
                           f"its confusion matrix ({trace}/{total})")


def generate_report(out: str | os.PathLike = "report", only: str | None = None, jobs: int = 2,
                    data_dir: str | os.PathLike | None = None,
                    tensorboard: str | os.PathLike | None = None,
                    presets_path: str | os.PathLike | None = None, engine: str = "local",
                    address: str | None = None) -> Path:
    """Run what is missing or changed, then write ``out/REPORT.md``; returns its path.
    ``engine`` and ``address`` as in ``twinnet.parallel.run_jobs``."""
    from twinnet.data import load_mnist

    started = time.perf_counter()
    out = Path(out)
    presets = load_presets(presets_path)
    retrain = select(presets, only) if only else []
    load_mnist(data_dir)  # fail on bad data here, once, before any worker starts
    metrics, todo = plan_runs(presets, out, retrain, None if data_dir is None else str(data_dir), jobs)
    metrics.update(run_planned(todo, jobs, len(metrics), engine, address))
    for preset in presets:
        if preset.id in metrics:
            check_consistent(preset, metrics[preset.id])
    if tensorboard is not None:
        from twinnet.tensorboard import write_tensorboard

        for preset in (p for p in presets if p.id in metrics):
            write_tensorboard(metrics[preset.id], tensorboard,
                              f"{preset.config.model}/{preset.config.backend}")
    write_twin_plots(out, presets, metrics)
    path = out / "REPORT.md"
    write_text_atomic(path, render_report(out, presets, metrics, time.perf_counter() - started,
                                          len(todo)))
    return path


def write_twin_plots(out: Path, presets: list[Preset], metrics: dict[str, Metrics]) -> None:
    from twinnet.plots import plot_twins

    for model in MODEL_NAMES:
        curves = {f"{p.label} {p.config.backend}": metrics[p.id]["curves"]
                  for p in presets if p.config.model == model and p.id in metrics}
        if curves:
            plot_twins(curves, f"{model}: both twins", out / f"twins-{model}.png")


# -- render ----------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def measured(figure: Callable[[Metrics], str], missing: str = "") -> Cell:
    """A cell read from the run's metrics; ``missing`` for a preset not run yet."""
    return lambda preset, run: missing if run is None else figure(run)


def error_rate(split: str, missing: str = "") -> Cell:
    return measured(lambda run: percent(1 - run["final"][split]["accuracy"]), missing)


def seed_figure(key: str) -> Cell:
    """The seed report's figure ``key`` for the run, as an error rate for accuracies."""
    def cell(preset: Preset, run: Metrics | None) -> str:
        value = preset.seed_report.get(key)
        if value is None:
            return "n/a"
        return percent(1 - value) if key.endswith("accuracy") else f"{value:g}"
    return cell


COLUMNS: tuple[tuple[str, Cell], ...] = (
    ("run", lambda p, run: p.label),
    ("model", lambda p, run: p.config.model),
    ("twin", lambda p, run: p.config.backend),
    ("optimizer", lambda p, run: p.config.optimizer),
    ("lr", lambda p, run: f"{p.config.lr:g}"),
    ("schedule", lambda p, run: p.config.schedule),
    ("steps", lambda p, run: str(p.config.steps)),
    ("train error", error_rate("train", missing="not run yet")),
    ("val error", error_rate("validation")),
    ("test error", error_rate("test")),
    ("test accuracy", measured(lambda run: percent(run["final"]["test"]["accuracy"]))),
    ("seed lr", seed_figure("lr")),
    ("seed steps", seed_figure("steps")),
    ("seed train error", seed_figure("train_accuracy")),
    ("seed test error", seed_figure("test_accuracy")),
    ("wall time", measured(lambda run: f"{run['wall_seconds']:.0f} s")),
)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def render_report(out: Path, presets: list[Preset], metrics: dict[str, Metrics], elapsed: float,
                  trained: int, env: dict[str, Any] | None = None) -> str:
    """REPORT.md: comparison table, one section per model, environment."""
    env = environment() if env is None else env
    done = [p for p in presets if p.id in metrics]
    header = text("header", now=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  cpu=env["cpu"], cpu_count=env["cpu_count"], runs=len(done),
                  run_seconds=sum(metrics[p.id]["wall_seconds"] for p in done), trained=trained,
                  elapsed=elapsed, derivations=derivations_link(out))
    table = markdown_table([name for name, _ in COLUMNS],
                           [[cell(p, metrics.get(p.id)) for _, cell in COLUMNS] for p in presets])
    choices = "".join(f"- {p.label}: {p.lr_chosen_by}\n" for p in presets)
    models = [model_section(model, [p for p in presets if p.config.model == model], metrics)
              for model in MODEL_NAMES if any(p.config.model == model for p in presets)]
    parts = [header, text("table_intro"), table, text("lr_choices"), choices, *models,
             environment_section(presets, metrics, env)]
    return "\n".join(parts)


def derivations_link(out: Path) -> str:
    docs = Path(__file__).resolve().parents[2] / "docs" / "derivations.md"
    if docs.is_file():
        return os.path.relpath(docs, out.resolve())
    return "docs/derivations.md"  # installed without the repository beside it


def model_section(model: str, presets: list[Preset], metrics: dict[str, Metrics]) -> str:
    parts = [text("model", model=model, architecture=DESCRIPTIONS[model], params=count_params(model),
                  multiply_adds=multiply_adds_per_image(model))]
    if any(p.id in metrics for p in presets):
        parts.append(text("twins_figure", model=model))
    for preset in presets:
        parts.append(text("run_heading", label=preset.label, model=model,
                          twin=TEXT["twin_names"][preset.config.backend]))
        parts.append(run_section(preset, metrics[preset.id]) if preset.id in metrics
                     else text("not_run"))
    return "\n".join(parts)


def run_section(preset: Preset, run: Metrics) -> str:
    """One run's settings, final figures, pictures and test confusion matrix."""
    final = run["final"]
    figures = markdown_table(["", *SPLITS], [
        ["accuracy", *(percent(final[s]["accuracy"]) for s in SPLITS)],
        ["cross-entropy", *(f"{final[s]['loss']:.4f}" for s in SPLITS)]])
    confusion = markdown_table(["true \\ predicted", *map(str, range(10))], [
        [f"**{digit}**", *(f"**{n}**" if i == digit else str(n) for i, n in enumerate(row))]
        for digit, row in enumerate(run["confusion_matrix"])])
    folder = preset.run_dir(Path()).as_posix()
    return text("run", **vars(preset.config), train_seconds=run["train_seconds"], folder=folder,
                figures=figures.rstrip("\n"), confusion=confusion.rstrip("\n"))


def environment_section(presets: list[Preset], metrics: dict[str, Metrics], env: dict) -> str:
    """Versions (this machine's, then any the runs recorded) and each run's timing."""
    versions = dict(env)
    for preset in (p for p in presets if p.id in metrics):
        versions.update({k: v for k, v in metrics[preset.id]["environment"].items() if k not in versions})
    keys = ("twinnet", "python", "numpy", "tensorflow", "platform", "cpu", "cpu_count")
    version_table = markdown_table(["what", "version"],
                                   [[key, str(versions[key])] for key in keys if key in versions])
    timing_table = markdown_table(
        ["run", "training time", "wall time (incl. evaluation)"],
        [[p.label, f"{metrics[p.id]['train_seconds']:.1f} s", f"{metrics[p.id]['wall_seconds']:.1f} s"]
         for p in presets if p.id in metrics])
    return text("environment", versions=version_table.rstrip("\n"), timings=timing_table.rstrip("\n"))
