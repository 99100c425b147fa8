"""The results report: plan the preset runs, run what is missing, render REPORT.md.

- **Plan**: the runs are the tuned presets (``twinnet.presets``), each trained with K
  seeds (``--seeds``; seed k in ``Preset.run_dir(out, k)``), and the assignment report's eight
  runs at its own settings (``presets.assignment_settings_presets``), one seed each. Every seed
  run whose folder holds a finished run of its exact configuration is reused; the others
  become ``RunJob``s, longest first.
- **Run**: the jobs train on workers (``twinnet.parallel``: local processes or Ray), each
  returning its metrics and weights; this process writes the run folders (``twinnet.runs``).
- **Render**: every figure is read from a run's ``metrics.json`` (read back from the run
  folders), after each run's test accuracy is checked against the trace of its confusion
  matrix. The main table shows each figure over seeds (one value, or mean ± std and
  min–max); the twins of a model are compared paired by seed with a 95% t interval; the
  assignment report's section comes from ``twinnet.assignment_report``. Tables are built from column
  definitions (``COLUMNS``); the prose is in ``report_text.toml``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from twinnet.assignment_report import (
    CONTRADICTS,
    NOT_REPRODUCED,
    NOT_RUN_YET,
    REPRODUCED,
    REPRODUCED_WITHIN_PP,
    assignment_columns,
    load_assignment_report,
    percent,
    render_assignment_section,
    verdict,
)
from twinnet.config import TrainConfig
from twinnet.environment import environment
from twinnet.errors import TwinnetError
from twinnet.models import count_params, describe, model_name, multiply_adds_per_image
from twinnet.parallel import check_ray_address, run_jobs
from twinnet.presets import Preset, assignment_settings_presets, check_name_lengths, load_presets, select
from twinnet.progress import BoardJob, JobProgressFile, JobsBoard, steps_into
from twinnet.runs import (
    PLOTS_BYTES,
    check_confusion,
    check_output_dir,
    check_run_dir,
    draw_run_plots,
    finished_metrics,
    lock_run_dir,
    read_finished,
    run_bytes,
    safe_name,
    write_run,
)
from twinnet.training import SPLITS, check_training_memory, train
from twinnet.util import write_text_atomic

TEXT = tomllib.loads(resources.files("twinnet").joinpath("report_text.toml").read_text(encoding="utf-8"))
ASSIGNMENT = load_assignment_report()  # the assignment report's figures (twinnet/assignment_report.toml)
Metrics = dict[str, Any]  # one run's metrics.json
Cell = Callable[[Preset, "list[Metrics]"], str]  # a table cell of a preset and its finished seed runs


def text(name: str, **values: Any) -> str:
    """The prose ``name`` of report_text.toml with its placeholders filled in."""
    return TEXT[name].format(**values)


# -- plan ------------------------------------------------------------------------------

# The assignment-settings runs rerun the assignment report's single runs: one seed each, whatever --seeds.
ASSIGNMENT_SETTINGS_SEEDS = 1


@dataclass(frozen=True)
class RunJob:
    """One seed of one preset to train, as a worker receives it (``preset.config.seed`` is
    that seed, see ``Preset.with_seed``; it holds no data: the worker loads MNIST from
    ``data_dir`` on its own machine)."""

    preset: Preset
    directory: str  # the run folder the driver writes
    data_dir: str | None
    progress: bool | None  # show a progress bar: None when stderr is a terminal
    threads: int | None = None  # set by twinnet.parallel.run_jobs
    progress_file: str | None = None  # where to write its steps for the driver's board

    @property
    def name(self) -> str:
        return self.preset.label


def cost(config: TrainConfig) -> int:
    """Rough work of a run, to start the longest first."""
    return multiply_adds_per_image(config.model) * config.steps * config.batch_size


def seed_count(preset: Preset, seeds: int) -> int:
    """How many seeds ``preset`` is trained with in a report of ``seeds`` seeds."""
    return min(seeds, ASSIGNMENT_SETTINGS_SEEDS) if preset.reruns else seeds


def plan_runs(presets: list[Preset], out: Path, retrain: list[Preset], data_dir: str | None,
              workers: int, seeds: int = 1) -> tuple[dict[tuple[str, int], Metrics], list[RunJob]]:
    """Finished runs to reuse, by (preset id, seed index k), and the jobs to run, longest first.

    Each preset is planned with ``seed_count`` seeds, seed k in ``preset.run_dir(out, k)``.
    Without ``retrain`` every unfinished seed run is run. With it (``--only``) exactly the
    presets it names are run, all their seeds, finished or not (after a code change, say);
    the others are only reused, if finished. A run of the right configuration whose
    metrics.json or weights are damaged (``runs.read_finished``) is trained again, or,
    outside ``--only``, left out, with one note line on stderr naming the file and key.
    """
    reused: dict[tuple[str, int], Metrics] = {}
    todo = []
    for preset in presets:
        count = seed_count(preset, seeds)
        for k in range(count):
            seeded = preset.with_seed(k, count)
            directory = preset.run_dir(out, k)
            found, damage = (None, None) if preset in retrain else read_finished(directory, seeded.config)
            if found is not None:
                reused[preset.id, k] = found
            elif not retrain or preset in retrain:
                todo.append((seeded, directory))
            if damage:
                then = ("so it is trained again" if not retrain or preset in retrain
                        else f"so it is left out; --only {preset.id} trains it again")
                print(f"twinnet: note: run {seeded.label}: {damage}; {then}", file=sys.stderr)
    todo.sort(key=lambda job: cost(job[0].config), reverse=True)
    # No bar of its own: the driver's board (progress.JobsBoard) shows every run.
    return reused, [RunJob(p, str(directory), data_dir, False) for p, directory in todo]


def finished_runs(presets: list[Preset], out: Path, seeds: int) -> dict[str, list[Metrics]]:
    """The finished seed runs of each preset, by preset id, in seed order (missing ones left
    out; a preset with none is absent)."""
    runs = {}
    for preset in presets:
        count = seed_count(preset, seeds)
        found = [finished_metrics(preset.run_dir(out, k), preset.with_seed(k, count).config)
                 for k in range(count)]
        if found := [metrics for metrics in found if metrics is not None]:
            runs[preset.id] = found
    return runs


# -- run -------------------------------------------------------------------------------


def run_job(job: RunJob) -> dict[str, Any]:
    """Train one preset; the worker of ``generate_report``. Returns ``metrics`` (the run's
    metrics.json) and ``params`` (its weights, canonical names -> arrays) for the driver."""
    from twinnet.data import load_mnist

    if job.progress_file is not None:  # on the board as started, before the slow imports
        JobProgressFile(job.progress_file, job.preset.config.steps)
    with steps_into(job.progress_file):  # the run's progress bar writes its steps there
        model, metrics = train(job.preset.config, load_mnist(job.data_dir), progress=job.progress,
                               threads=job.threads)
    return {"metrics": metrics, "params": model.params}


def print_plan(jobs: list[RunJob], workers: int, reused: int, engine: str) -> None:
    """The plan, before anything slow: how many runs to train and to reuse, and which."""
    if not jobs:
        print(f"reusing all {reused} finished run(s); nothing to train", flush=True)
        return
    print(f"training {len(jobs)} run(s) with {workers} job(s) on the {engine} engine; "
          f"reusing {reused} finished", flush=True)
    print(f"  to train, longest first: {', '.join(job.preset.label for job in jobs)}", flush=True)


def run_planned(jobs: list[RunJob], workers: int, reused: int, engine: str = "local",
                address: str | None = None, quiet: bool = False, live: bool | None = None,
                plan_printed: bool = False) -> dict[str, Metrics]:
    """Run the jobs, ``workers`` at a time (on Ray: as many as the cluster holds), and write
    each run folder as its job returns; their metrics by preset id.

    Progress goes to stdout: the plan (unless ``plan_printed`` or ``quiet``), one line per
    finished run, and where stdout is a terminal (``live``; never with ``quiet``) a status
    line redrawn every second (``progress.JobsBoard``) naming the runs in training, how far
    each is and an estimate of the time left."""
    if not quiet and not plan_printed:
        print_plan(jobs, workers, reused, engine)
    results: dict[str, Metrics] = {}
    with tempfile.TemporaryDirectory(prefix="twinnet-report-") as steps_dir:
        jobs = [replace(job, progress_file=os.path.join(steps_dir, f"{i}.json"))
                for i, job in enumerate(jobs)]
        board = {job.preset.id: BoardJob(f"{job.preset.label} {model_name(job.preset.config.model)} "
                                         f"{job.preset.config.backend}", job.preset.config.steps,
                                         cost(job.preset.config), job.progress_file) for job in jobs}
        with JobsBoard(board, workers, live=False if quiet else live) as shown:
            for job, result in run_jobs(run_job, jobs, workers, engine, address):
                Path(job.directory).mkdir(parents=True, exist_ok=True)
                with lock_run_dir(job.directory):  # one writer per run folder, as for train
                    metrics = write_run(job.directory, result["params"], result["metrics"])
                results[job.preset.id] = metrics
                c = job.preset.config
                shown.finished(job.preset.id, f"{job.preset.label} {model_name(c.model)} ({c.backend}): "
                               f"test accuracy {metrics['final']['test']['accuracy']:.2%} in "
                               f"{metrics['train_seconds']:.0f} s", metrics["wall_seconds"])
    return results


def check_consistent(preset: Preset, metrics: Metrics) -> None:
    """Test accuracy must equal the confusion matrix's trace over the test count
    (``runs.check_confusion``); TwinnetError naming the run if not."""
    try:
        check_confusion(metrics.get("confusion_matrix"), metrics["final"]["test"])
    except ValueError as exc:
        raise TwinnetError(f"run {preset.label}: {exc}; train it again with --only "
                           f"{preset.id}") from None


def generate_report(out: str | os.PathLike = "report", only: str | None = None, jobs: int = 2,
                    data_dir: str | os.PathLike | None = None,
                    tensorboard: str | os.PathLike | None = None,
                    presets_path: str | os.PathLike | None = None, seeds: int = 1,
                    assignment_settings: bool | None = None, engine: str = "local",
                    address: str | None = None, quiet: bool | None = None) -> Path:
    """Run what is missing or changed, then write ``out/REPORT.md``; returns its path.

    The runs are the presets (``presets_path``), each with ``seeds`` seeds, and with
    ``assignment_settings`` (default: when the shipped presets are used; a presets file of one's
    own says exactly which runs to train) the eight runs at the assignment report's own
    settings, one seed each. ``only`` selects from both sets. ``engine`` and ``address`` as in
    ``twinnet.parallel.run_jobs``. When ``out`` is the repository's docs/report, the results
    block of the repository's README.md is rewritten from the same runs (``readme_of``).

    On stdout: the plan at once, a status line every second while runs train (names, steps,
    time left) and one line per finished run; with ``quiet`` (default: when stdout is not a
    terminal) only the lines of the finished runs (and the README's, when it is rewritten).
    """
    from twinnet.data import load_mnist

    started = time.perf_counter()
    out = Path(out)
    presets = load_presets(presets_path)
    if assignment_settings is None:
        assignment_settings = presets_path is None
    reruns = assignment_settings_presets(ASSIGNMENT) if assignment_settings else []
    retrain = check_plan(out, presets + reruns, only, seeds)
    if tensorboard is not None:
        from twinnet.tensorboard import check_log_dir

        check_log_dir(tensorboard)
    if engine == "ray" and address:
        check_ray_address(address)
    readme = readme_of(out)
    for preset in presets + reruns:  # each of ``jobs`` workers trains one run at a time
        check_training_memory(preset.config, copies=jobs, threads=max(1, (os.cpu_count() or 1) // jobs))
    reused, todo = plan_runs(presets + reruns, out, retrain, None if data_dir is None else str(data_dir),
                             jobs, seeds)
    if quiet is None:  # into a file or a pipe: one line per finished run, no more
        quiet = not sys.stdout.isatty()
    if not quiet:  # at once: loading MNIST (or first downloading it) takes a while
        print_plan(todo, jobs, len(reused), engine)
    load_mnist(data_dir)  # fail on bad data here, once, before any worker starts
    run_planned(todo, jobs, len(reused), engine, address, quiet=quiet, plan_printed=True)
    runs = finished_runs(presets + reruns, out, seeds)  # as the driver wrote them
    for preset in presets + reruns:
        for metrics in runs.get(preset.id, []):
            check_consistent(preset, metrics)
    if tensorboard is not None:
        write_tensorboard_runs(tensorboard, presets, runs, seeds)
    write_twin_plots(out, presets, runs)
    redraw_shown_runs(out, presets, runs)
    path = out / "REPORT.md"
    write_text_atomic(path, render_report(out, presets, runs, time.perf_counter() - started, len(todo),
                                          seeds=seeds, reruns=reruns))
    if readme is not None:
        write_text_atomic(readme, with_blocks(readme, readme_blocks(presets, runs, seeds, reruns)))
        print(f"updated the figures in {readme} from {path}")
    return path


def check_plan(out: Path, presets: list[Preset], only: str | None, seeds: int) -> list[Preset]:
    """Check everything a report's plan depends on before any training: ``--seeds``, every
    preset at every seed, ``--only`` and the output folder's room; returns the presets
    ``only`` names (to be retrained), empty without it."""
    if seeds < 1:
        raise TwinnetError(f"--seeds must be at least 1, got {seeds}")
    for preset in presets:
        preset.with_seed(seed_count(preset, seeds) - 1, seed_count(preset, seeds))
    retrain = select(presets, only) if only else []
    check_output_dir(out, sum(run_bytes(p.config) * seed_count(p, seeds) for p in presets) + PLOTS_BYTES)
    check_name_lengths(presets, out)
    for preset in presets:
        for k in range(seed_count(preset, seeds)):
            check_run_dir(preset.run_dir(out, k))
    return retrain


def write_tensorboard_runs(log_dir: str | os.PathLike, presets: list[Preset], runs: dict[str, list[Metrics]],
                           seeds: int) -> None:
    """Every seed run's curves as TensorBoard scalars under ``log_dir/MODEL/BACKEND[/seed-S]``."""
    from twinnet.tensorboard import write_tensorboard

    for preset in (p for p in presets if p.id in runs):
        for metrics in runs[preset.id]:
            name = f"{safe_name(preset.config.model)}/{preset.config.backend}"
            if seeds > 1:
                name += f"/seed-{metrics['config']['seed']}"
            write_tensorboard(metrics, log_dir, name)


def models_of(presets: list[Preset]) -> list[str]:
    """The models the presets train, in the order the presets file first names them."""
    return list(dict.fromkeys(p.config.model for p in presets))


def write_twin_plots(out: Path, presets: list[Preset], runs: dict[str, list[Metrics]]) -> None:
    """``out/twins-<model>.png``: both twins' curves of each model, over all their seeds."""
    from twinnet.plots import plot_twins

    for model in models_of(presets):
        curves = {f"{p.label} {p.config.backend}": [run["curves"] for run in runs[p.id]]
                  for p in presets if p.config.model == model and p.id in runs}
        if curves:
            plot_twins(curves, f"{model_name(model)}: both twins", out / f"twins-{safe_name(model)}.png")


def redraw_shown_runs(out: Path, presets: list[Preset], runs: dict[str, list[Metrics]]) -> None:
    """Redraw the run pictures REPORT.md shows (each preset's median seed, ``median_run``)
    from their metrics, so a report that reuses runs shows them as the plotting code draws
    them now."""
    for preset in (p for p in presets if p.id in runs):
        run = median_run(runs[preset.id])
        draw_run_plots(preset.run_dir(out, run["config"]["seed"] - preset.config.seed), run)


# -- render ----------------------------------------------------------------------------

# t quantiles t(0.975, df) for df = 1..30: the half-width of a 95% confidence interval of a
# mean of df + 1 values is t * std / sqrt(df + 1).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964
# Twins "agree closely" when the interval of their test-accuracy difference lies in this band.
AGREEMENT_PP = 0.1


def t_quantile_975(df: int) -> float:
    """t(0.975, df), from the table up to df = 30, beyond it from the Cornish-Fisher expansion
    around the normal quantile (off by less than 0.001 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def interval_95(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% confidence interval (low, high) of the mean of two or more values,
    t-distributed with n - 1 degrees of freedom."""
    mean, std = mean_std(values)
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


def spread(values: list[float]) -> str:
    """Fractions as percentages over seeds: one value as it is; several as mean ± std and
    min–max, ``1.23 ± 0.05% (1.17–1.30%)``."""
    if len(values) == 1:
        return percent(values[0])
    mean, std = mean_std(values)
    return (f"{mean * 100:.2f} ± {std * 100:.2f}% "
            f"({min(values) * 100:.2f}–{max(values) * 100:.2f}%)")


def measured(figure: Callable[[list[Metrics]], str], missing: str = "") -> Cell:
    """A cell read from the preset's finished seed runs; ``missing`` for a preset not run yet."""
    return lambda preset, runs: figure(runs) if runs else missing


def error_rate(split: str, missing: str = "") -> Cell:
    return measured(lambda runs: spread([1 - run["final"][split]["accuracy"] for run in runs]), missing)


def assignment_figure(key: str) -> Cell:
    """The assignment report's figure for the run (``twinnet.assignment_report.assignment_columns``)."""
    return lambda preset, runs: assignment_columns(ASSIGNMENT, preset.label)[key]


def mean_seconds(runs: list[Metrics], key: str = "wall_seconds") -> float:
    return sum(run[key] for run in runs) / len(runs)


COLUMNS: tuple[tuple[str, Cell], ...] = (
    ("run", lambda p, runs: p.label),
    ("model", lambda p, runs: model_name(p.config.model)),
    ("twin", lambda p, runs: p.config.backend),
    ("optimizer", lambda p, runs: p.config.optimizer),
    ("lr", lambda p, runs: f"{p.config.lr:g}"),
    ("schedule", lambda p, runs: p.config.schedule),
    ("steps", lambda p, runs: str(p.config.steps)),
    ("seeds", measured(lambda runs: str(len(runs)))),
    ("train error", error_rate("train", missing="not run yet")),
    ("val error", error_rate("validation")),
    ("test error", error_rate("test")),
    ("test accuracy", measured(lambda runs: spread([run["final"]["test"]["accuracy"] for run in runs]))),
    ("assignment lr", assignment_figure("assignment_lr")),
    ("assignment steps", assignment_figure("assignment_steps")),
    ("assignment train error", assignment_figure("assignment_train_error")),
    ("assignment test error", assignment_figure("assignment_test_error")),
    ("wall time", measured(lambda runs: f"{mean_seconds(runs):.0f} s")),
)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def render_report(out: Path, presets: list[Preset], runs: dict[str, list[Metrics]], elapsed: float,
                  trained: int, env: dict[str, Any] | None = None, seeds: int = 1,
                  reruns: list[Preset] | None = None) -> str:
    """REPORT.md: comparison table, one section per model, the assignment report rerun, the twins
    compared, environment.

    ``runs`` maps a preset id to its finished seed runs' metrics in seed order (of
    ``presets`` and of the assignment-settings presets ``reruns``); ``seeds`` is the number each
    preset was planned with.
    """
    reruns = [] if reruns is None else reruns
    everything = [p for p in presets + reruns if p.id in runs]
    env = recorded_environment(everything, runs, environment() if env is None else env)
    header = text("header", now=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  cpu=env["cpu"], cpu_count=env["cpu_count"],
                  runs=sum(len(runs[p.id]) for p in everything),
                  run_seconds=sum(run["wall_seconds"] for p in everything for run in runs[p.id]),
                  trained=trained, elapsed=elapsed, derivations=derivations_link(out))
    seeds_text = text("one_seed") if seeds == 1 else text("many_seeds", seeds=seeds, last=seeds - 1)
    table = markdown_table([name for name, _ in COLUMNS],
                           [[cell(p, runs.get(p.id, [])) for _, cell in COLUMNS] for p in presets])
    choices = "".join(f"- {p.label}: {p.lr_chosen_by}\n" for p in presets)
    models = [model_section(model, [p for p in presets if p.config.model == model], runs, seeds)
              for model in models_of(presets)]
    rerun_metrics = {p.reruns: runs[p.id][0] for p in reruns if p.id in runs}
    rerun_section = "\n".join(render_assignment_section(ASSIGNMENT, rerun_metrics)) + "\n"
    rerun_folders = ", ".join(f"[{p.run_dir(Path()).as_posix()}]({p.run_dir(Path()).as_posix()})"
                              for p in reruns if p.id in runs)
    rerun_note = text("assignment_rerun_note", seeds=seeds, folders=rerun_folders or "none yet")
    parts = [header, text("table_intro", seeds=seeds_text), table, text("lr_choices"), choices, *models,
             rerun_section, rerun_note, twins_section(presets, runs),
             environment_section(presets + reruns, runs, env)]
    return "\n".join(parts)


def derivations_link(out: Path) -> str:
    docs = Path(__file__).resolve().parents[2] / "docs" / "derivations.md"
    if docs.is_file():
        return os.path.relpath(docs, out.resolve())
    return "docs/derivations.md"  # installed without the repository beside it


def model_section(model: str, presets: list[Preset], runs: dict[str, list[Metrics]], seeds: int) -> str:
    name = model_name(model)
    parts = [text("model", model=name, architecture=describe(model), params=count_params(model),
                  multiply_adds=multiply_adds_per_image(model))]
    if any(p.id in runs for p in presets):
        parts.append(text("twins_figure_one" if seeds == 1 else "twins_figure_many", model=name,
                          file=safe_name(model)))
    for preset in presets:
        parts.append(text("run_heading", label=preset.label, model=name,
                          twin=TEXT["twin_names"][preset.config.backend]))
        parts.append(run_section(preset, runs[preset.id]) if preset.id in runs else text("not_run"))
    return "\n".join(parts)


def median_run(runs: list[Metrics]) -> Metrics:
    """The run of median test accuracy (of an even count the lower middle one; ties by seed)."""
    ranked = sorted(runs, key=lambda run: (run["final"]["test"]["accuracy"], run["config"]["seed"]))
    return ranked[(len(ranked) - 1) // 2]


def run_section(preset: Preset, runs: list[Metrics]) -> str:
    """One run's settings, final figures, pictures and test confusion matrix; with several
    seeds, first a table of each seed's accuracies, then all that of the median seed."""
    run = median_run(runs)
    k = run["config"]["seed"] - preset.config.seed
    parts = []
    if len(runs) > 1:
        per_seed = markdown_table(["seed", *(f"{s} accuracy" for s in SPLITS)], [
            [str(r["config"]["seed"]), *(percent(r["final"][s]["accuracy"]) for s in SPLITS)]
            for r in runs])
        parts.append(text("seeds_table", count=len(runs), table=per_seed.rstrip("\n"),
                          median=run["config"]["seed"]))
    final = run["final"]
    figures = markdown_table(["", *SPLITS], [
        ["accuracy", *(percent(final[s]["accuracy"]) for s in SPLITS)],
        ["cross-entropy", *(f"{final[s]['loss']:.4f}" for s in SPLITS)]])
    confusion = markdown_table(["true \\ predicted", *map(str, range(10))], [
        [f"**{digit}**", *(f"**{n}**" if i == digit else str(n) for i, n in enumerate(row))]
        for digit, row in enumerate(run["confusion_matrix"])])
    folder = preset.run_dir(Path(), k).as_posix()
    parts.append(text("run", **{**vars(preset.config), "seed": run["config"]["seed"]},
                      train_seconds=run["train_seconds"], folder=folder,
                      figures=figures.rstrip("\n"), confusion=confusion.rstrip("\n")))
    return "\n".join(parts)


def paired_differences(tf_runs: list[Metrics], numpy_runs: list[Metrics]) -> list[tuple[int, float]]:
    """(seed, TF minus NumPy test accuracy in percentage points) for each seed both twins ran."""
    numpy_by_seed = {run["config"]["seed"]: run["final"]["test"]["accuracy"] for run in numpy_runs}
    return [(run["config"]["seed"], (run["final"]["test"]["accuracy"] - numpy_by_seed[seed]) * 100)
            for run in tf_runs if (seed := run["config"]["seed"]) in numpy_by_seed]


def twin_agreement(pairs: list[tuple[int, float]]) -> tuple[list[str], str | None]:
    """The table cells (seeds, mean difference, 95% interval, contains 0, within the band) and
    the sentence on whether the twins agree, from paired differences in pp; no sentence for
    one seed, which gives no interval."""
    differences = [d for _, d in pairs]
    if len(differences) == 1:
        return [str(len(differences)), f"{differences[0]:+.2f} pp", "n/a (one seed)", "n/a", "n/a"], None
    mean, low, high = interval_95(differences)
    contains_zero = low <= 0 <= high
    within = -AGREEMENT_PP <= low and high <= AGREEMENT_PP
    cells = [str(len(differences)), f"{mean:+.3f} pp", f"[{low:+.3f}, {high:+.3f}] pp",
             "yes" if contains_zero else "no", "yes" if within else "no"]
    sentence = text("agreement", seeds=len(differences), mean=mean, low=low, high=high,
                    zero=TEXT["zero_inside" if contains_zero else "zero_outside"],
                    band=TEXT["band_inside" if within else "band_outside"].format(band=AGREEMENT_PP))
    return cells, sentence


def twins_section(presets: list[Preset], runs: dict[str, list[Metrics]]) -> str:
    """The closing note: each model's twin difference of test accuracy, paired by seed."""
    rows, sentences, one_seed = [], [], []
    for model in models_of(presets):
        twins = {p.config.backend: p for p in presets if p.config.model == model and p.id in runs}
        if set(twins) != {"tf", "numpy"}:
            continue
        pairs = paired_differences(runs[twins["tf"].id], runs[twins["numpy"].id])
        if not pairs:
            continue
        cells, sentence = twin_agreement(pairs)
        rows.append([model_name(model), f"{twins['tf'].label} − {twins['numpy'].label}", *cells])
        if sentence is None:
            one_seed.append(model_name(model))
        else:
            sentences.append(f"- **{model_name(model)}**: {sentence}\n")
    if one_seed:
        sentences.append(text("agreement_one_seed", models=", ".join(one_seed)))
    table = markdown_table(["model", "twins", "seeds", "mean difference", "95% interval", "contains 0",
                            f"within ±{AGREEMENT_PP:g} pp"], rows) if rows else text("no_twin_pairs")
    return text("twins", table=table.rstrip("\n"), sentences="".join(sentences).rstrip("\n"))


def recorded_environment(presets: list[Preset], runs: dict[str, list[Metrics]], env: dict) -> dict[str, str]:
    """Where the runs were trained: each key of their recorded environments, its distinct
    values joined by " / " where runs differ; this machine's (``env``) where none recorded it.
    (A report re-rendered elsewhere still names the machine its figures came from.)"""
    recorded: dict[str, list[str]] = {}
    for preset in (p for p in presets if p.id in runs):
        for run in runs[preset.id]:
            for key, value in run["environment"].items():
                if str(value) not in recorded.setdefault(key, []):
                    recorded[key].append(str(value))
    return {**{key: str(value) for key, value in env.items()},
            **{key: " / ".join(values) for key, values in recorded.items()}}


def environment_section(presets: list[Preset], runs: dict[str, list[Metrics]], versions: dict) -> str:
    """Versions and machine (``recorded_environment``) and each run's timing (mean per seed)."""
    keys = ("twinnet", "python", "numpy", "tensorflow", "platform", "cpu", "simd", "cpu_count")
    version_table = markdown_table(["what", "version"],
                                   [[key, str(versions[key])] for key in keys if key in versions])
    timing_table = markdown_table(
        ["run", "training time", "wall time (incl. evaluation)"],
        [[p.label if len(runs[p.id]) == 1 else f"{p.label} (mean of {len(runs[p.id])} seeds)",
          f"{mean_seconds(runs[p.id], 'train_seconds'):.1f} s", f"{mean_seconds(runs[p.id]):.1f} s"]
         for p in presets if p.id in runs])
    return text("environment", versions=version_table.rstrip("\n"), timings=timing_table.rstrip("\n"))


# -- the README's figures ----------------------------------------------------------------
# The README quotes a few figures of the committed report (docs/report). Each sits in a
# named block, between <!-- NAME:start --> and <!-- NAME:end -->, rewritten by
# `twinnet report --out docs/report` from the same runs as REPORT.md, so it cannot drift;
# tests/test_readme.py regenerates the blocks from docs/report and compares.

REPOSITORY = Path(__file__).resolve().parents[2]  # the clone, when twinnet runs from one
README_BLOCKS = ("report-time", "results")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def readme_of(out: Path) -> Path | None:
    """The README.md whose blocks a report in ``out`` rewrites: the repository's, when ``out``
    is its docs/report, else None. A TwinnetError if that README lacks a block (checked
    before any training)."""
    readme = REPOSITORY / "README.md"
    if out.resolve() != REPOSITORY / "docs" / "report" or not readme.is_file():
        return None
    blocks_in(readme)
    return readme


def blocks_in(readme: Path) -> dict[str, str]:
    """The text of each README_BLOCKS block of ``readme``, between its markers; a
    TwinnetError unless each marker appears exactly once, start first."""
    text_ = readme.read_text(encoding="utf-8")
    blocks = {}
    for name in README_BLOCKS:
        start, end = markers(name)
        if text_.count(start) != 1 or text_.count(end) != 1 or text_.index(start) > text_.index(end):
            raise TwinnetError(f"{readme}: needs one block {name}, between {start} and a later {end}")
        blocks[name] = text_.split(start, 1)[1].split(end, 1)[0]
    return blocks


def with_blocks(readme: Path, blocks: dict[str, str]) -> str:
    """The text of ``readme`` with each of ``blocks`` (name -> text) between its markers."""
    blocks_in(readme)  # each block once
    text_ = readme.read_text(encoding="utf-8")
    for name, block in blocks.items():
        start, end = markers(name)
        head, rest = text_.split(start, 1)
        text_ = f"{head}{start}{block}{end}{rest.split(end, 1)[1]}"
    return text_


def accuracy_over_seeds(runs: list[Metrics]) -> str:
    """Test accuracy as ``98.02 ± 0.11%`` over several seeds, ``98.02%`` for one."""
    values = [run["final"]["test"]["accuracy"] for run in runs]
    if len(values) == 1:
        return percent(values[0])
    mean, std = mean_std(values)
    return f"{mean * 100:.2f} ± {std * 100:.2f}%"


def results_block(presets: list[Preset], runs: dict[str, list[Metrics]], seeds: int,
                  reruns: list[Preset]) -> str:
    """The README's results: one row per model with both twins' test accuracy and their
    difference paired by seed, whether its interval contains 0, then the verdicts on the
    assignment report's claims (``ASSIGNMENT``)."""
    rows, contains_zero = [], {}
    for model in models_of(presets):
        twins = {p.config.backend: p for p in presets if p.config.model == model and p.id in runs}
        if set(twins) != {"tf", "numpy"}:
            continue
        pairs = paired_differences(runs[twins["tf"].id], runs[twins["numpy"].id])
        cells = twin_agreement(pairs)[0] if pairs else ["0", "no common seed"]
        if len(pairs) > 1:
            contains_zero[model_name(model)] = cells[3] == "yes"
        difference = f"{cells[1]} {cells[2]}" if len(pairs) > 1 else cells[1]
        rows.append([model_name(model), *(f"{twins[b].label} {accuracy_over_seeds(runs[twins[b].id])}"
                              for b in ("tf", "numpy")), difference])
    table = markdown_table(["model", "TF twin", "NumPy twin", "TF − NumPy (95% interval)"], rows)
    inside = [model for model, yes in contains_zero.items() if yes]
    outside = [model for model, yes in contains_zero.items() if not yes]
    if not contains_zero:
        agreement = TEXT["readme_no_interval"]
    elif not outside:
        agreement = TEXT["readme_all_contain_zero"]
    else:
        agreement = text("readme_some_contain_zero", inside=", ".join(inside) or "no model",
                         outside=", ".join(outside))
    rerun_accuracy = {p.reruns: runs[p.id][0]["final"]["test"]["accuracy"] for p in reruns if p.id in runs}
    by_outcome: dict[str, list[str]] = {}
    for run in ASSIGNMENT.runs:
        by_outcome.setdefault(verdict(run, rerun_accuracy.get(run.label)).outcome, []).append(run.label)
    verdicts = [text(f"readme_{key}", labels=", ".join(by_outcome[outcome]), pp=REPRODUCED_WITHIN_PP)
                for key, outcome in (("reproduced", REPRODUCED), ("not_reproduced", NOT_REPRODUCED),
                                     ("contradicts", CONTRADICTS), ("not_run", NOT_RUN_YET))
                if by_outcome.get(outcome)]
    over = TEXT["readme_one_seed"] if seeds == 1 else text("readme_many_seeds", seeds=seeds)
    return "\n" + text("readme_results", over=over, agreement=agreement, table=table.rstrip("\n"),
                       verdicts="; ".join(verdicts) if verdicts else TEXT["readme_no_reruns"])


def report_time_block(presets: list[Preset], runs: dict[str, list[Metrics]], jobs: int = 2) -> str:
    """How long `make report` trains (one seed per run, ``jobs`` at a time), from the run
    time its runs took in the report: their seed 0's, summed, over ``jobs``."""
    seed_zero = [run for p in presets for run in runs.get(p.id, [])[:1]
                 if run["config"]["seed"] == p.config.seed]
    seconds = sum(run["wall_seconds"] for run in seed_zero)
    return text("readme_report_time", minutes=max(1, round(seconds / jobs / 60)), runs=len(seed_zero),
                seconds=seconds, jobs=jobs)


def readme_blocks(presets: list[Preset], runs: dict[str, list[Metrics]], seeds: int,
                  reruns: list[Preset]) -> dict[str, str]:
    """Every README block (README_BLOCKS) from a report's presets, reruns and finished runs."""
    return {"report-time": report_time_block(presets + reruns, runs),
            "results": results_block(presets, runs, seeds, reruns)}


def seeds_in(out: Path, presets: list[Preset]) -> int:
    """How many seeds the report in ``out`` holds: one more than the highest seed folder
    (``seed-k``) of any preset, 1 without any."""
    count = 1
    while any(p.run_dir(out, count).is_dir() for p in presets):
        count += 1
    return count


def readme_blocks_of(out: str | os.PathLike) -> dict[str, str]:
    """The README's blocks from the finished runs, in the report folder ``out``, of the
    shipped presets and the assignment report's settings (no training)."""
    out = Path(out)
    presets, reruns = load_presets(), assignment_settings_presets(ASSIGNMENT)
    seeds = seeds_in(out, presets)
    return readme_blocks(presets, finished_runs(presets + reruns, out, seeds), seeds, reruns)
