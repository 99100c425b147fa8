"""The results report: run the eight presets (or reuse finished runs) and write REPORT.md.

Every figure in the report is read from a run's ``metrics.json``; before anything is
written, each run's test accuracy is checked against the trace of its confusion matrix.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from twinnet.environment import environment
from twinnet.errors import TwinnetError
from twinnet.models import DESCRIPTIONS, MODEL_NAMES, count_params, multiply_adds_per_image
from twinnet.parallel import run_jobs
from twinnet.train import TrainConfig, train, write_run
from twinnet.util import write_text_atomic

BACKEND_NAMES = {"tf": "TensorFlow twin", "numpy": "NumPy twin"}
CONFIG_KEYS = ("model", "backend", "optimizer", "lr", "schedule", "steps", "batch_size", "seed")
SEED_KEYS = ("seed_optimizer", "seed_lr", "seed_steps", "seed_train_accuracy", "seed_test_accuracy")


@dataclass
class Preset:
    """One run of the report: its id (``P1a``), label (``P1:a``), configuration, where its
    learning rate came from, and the seed report's figures where known."""

    id: str
    label: str
    config: TrainConfig
    lr_chosen_by: str
    seed: dict[str, Any] = field(default_factory=dict)


def default_presets_path() -> Path:
    return Path(str(resources.files("twinnet") / "presets.toml"))


def load_presets(path: str | os.PathLike | None = None) -> list[Preset]:
    """Read the presets file; one clear error naming the file and the run for a bad entry."""
    source = Path(path) if path is not None else default_presets_path()
    try:
        table = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TwinnetError(f"{source}: cannot read presets ({exc})") from None
    presets = []
    for run_id, entry in table.get("runs", {}).items():
        unknown = set(entry) - {*CONFIG_KEYS, *SEED_KEYS, "label", "lr_chosen_by"}
        missing = [key for key in CONFIG_KEYS if key not in entry]
        if unknown or missing:
            raise TwinnetError(f"{source}: run {run_id}: missing {missing} or unknown {sorted(unknown)}")
        if entry["model"] not in MODEL_NAMES:
            raise TwinnetError(f"{source}: run {run_id}: unknown model {entry['model']!r}")
        config = TrainConfig(**{key: entry[key] for key in CONFIG_KEYS})
        presets.append(Preset(run_id, entry.get("label", run_id), config,
                              entry.get("lr_chosen_by", "not recorded"),
                              {key: entry[key] for key in SEED_KEYS if key in entry}))
    if not presets:
        raise TwinnetError(f"{source}: no [runs.*] tables")
    return presets


def select(presets: list[Preset], only: str | None) -> list[Preset]:
    """The presets named in ``only`` (comma-separated ids, labels or model names)."""
    if not only:
        return presets
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    chosen = [p for p in presets if wanted & {p.id, p.label, p.config.model}]
    known = {name for p in presets for name in (p.id, p.label, p.config.model)}
    if unknown := sorted(wanted - known):
        raise TwinnetError(f"--only: unknown run(s) {', '.join(unknown)}; "
                           f"known: {', '.join(p.id for p in presets)} or a model name")
    return chosen


def run_dir(out: Path, preset: Preset) -> Path:
    return out / "runs" / f"{preset.id}-{preset.config.model}-{preset.config.backend}"


def finished_metrics(directory: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The run's metrics if it finished with exactly this configuration, else None."""
    try:
        metrics = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("config") != asdict(config) or not (directory / "weights.npz").is_file():
        return None
    return metrics


def run_preset(config: TrainConfig, directory: str, data_dir: str | None,
               progress: bool | None) -> dict[str, Any]:
    """Train one preset and write its run folder; the worker of ``generate_report``."""
    from twinnet.data import load_mnist

    model, metrics = train(config, load_mnist(data_dir), progress=progress)
    write_run(directory, model, metrics)
    return metrics


def check_consistent(preset: Preset, metrics: dict[str, Any]) -> None:
    """Test accuracy must equal the confusion matrix's trace over the test count."""
    confusion = metrics["confusion_matrix"]
    trace = sum(confusion[i][i] for i in range(len(confusion)))
    total = sum(map(sum, confusion))
    test = metrics["final"]["test"]
    if total != test["count"] or trace != test["correct"] or test["accuracy"] != trace / total:
        raise TwinnetError(f"run {preset.label}: test accuracy {test['accuracy']} disagrees with "
                           f"its confusion matrix ({trace}/{total})")


def cost(config: TrainConfig) -> int:
    """Rough work of a run, to start the longest first."""
    return multiply_adds_per_image(config.model) * config.steps * config.batch_size


def generate_report(out: str | os.PathLike = "report", only: str | None = None, jobs: int = 2,
                    data_dir: str | os.PathLike | None = None,
                    tensorboard: str | os.PathLike | None = None,
                    presets_path: str | os.PathLike | None = None) -> Path:
    """Run what is missing or changed, then write ``out/REPORT.md``; returns its path."""
    from tqdm import tqdm

    from twinnet.data import load_mnist

    started = time.perf_counter()
    out = Path(out)
    presets = load_presets(presets_path)
    chosen = select(presets, only)
    load_mnist(data_dir)  # fail on bad data here, once, before any worker starts
    metrics: dict[str, dict[str, Any]] = {}
    todo = []
    for preset in chosen:
        # Runs named by --only are retrained even if finished: that is what it is for
        # (after a code change, say). Without it, finished runs are reused.
        found = None if only else finished_metrics(run_dir(out, preset), preset.config)
        if found is not None:
            metrics[preset.id] = found
        else:
            todo.append(preset)
    todo.sort(key=lambda p: cost(p.config), reverse=True)
    by_dir = {str(run_dir(out, p)): p for p in todo}
    data_arg = None if data_dir is None else str(data_dir)
    jobs_args = [(p.config, str(run_dir(out, p)), data_arg, None if jobs <= 1 else False)
                 for p in todo]
    if todo:
        print(f"training {len(todo)} run(s) with {jobs} job(s); reusing {len(metrics)} finished")
    with tqdm(total=len(todo), desc="report runs", unit="run", disable=jobs <= 1 or not os.isatty(2)) as bar:
        for args, result in run_jobs(run_preset, jobs_args, jobs):
            preset = by_dir[args[1]]
            metrics[preset.id] = result
            bar.update(1)
            print(f"  {preset.label} {preset.config.model} ({preset.config.backend}): test accuracy "
                  f"{result['final']['test']['accuracy']:.2%} in {result['train_seconds']:.0f} s")
    # Runs not asked for this time still belong in the report if they are finished.
    for preset in presets:
        if preset.id not in metrics:
            found = finished_metrics(run_dir(out, preset), preset.config)
            if found is not None:
                metrics[preset.id] = found
    for preset in presets:
        if preset.id in metrics:
            check_consistent(preset, metrics[preset.id])
    if tensorboard is not None:
        from twinnet.tensorboard import write_tensorboard

        for preset in presets:
            if preset.id in metrics:
                write_tensorboard(metrics[preset.id], tensorboard,
                                  f"{preset.config.model}/{preset.config.backend}")
    write_twin_plots(out, presets, metrics)
    elapsed = time.perf_counter() - started
    text = render_report(out, presets, metrics, elapsed, len(todo))
    path = out / "REPORT.md"
    write_text_atomic(path, text)
    return path


def write_twin_plots(out: Path, presets: list[Preset], metrics: dict[str, dict]) -> None:
    from twinnet.plots import plot_twins

    for model in MODEL_NAMES:
        curves = {f"{p.label} {p.config.backend}": metrics[p.id]["curves"]
                  for p in presets if p.config.model == model and p.id in metrics}
        if curves:
            plot_twins(curves, f"{model}: both twins", out / f"twins-{model}.png")


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def seed_cell(preset: Preset, key: str) -> str:
    value = preset.seed.get(key)
    if value is None:
        return "n/a"
    if key.endswith("accuracy"):
        return percent(1 - value)  # the table shows error rates
    return f"{value:g}"


def render_report(out: Path, presets: list[Preset], metrics: dict[str, dict], elapsed: float,
                  trained: int) -> str:
    """REPORT.md: comparison table, one section per model, environment."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    env = environment()
    done = [p for p in presets if p.id in metrics]
    run_seconds = sum(metrics[p.id]["wall_seconds"] for p in done)
    lines = [
        "# twinnet results report",
        "",
        f"Generated {now} by `twinnet report` on {env['cpu']} ({env['cpu_count']} cores). "
        f"The {len(done)} runs took {run_seconds:.0f} s of training and evaluation "
        f"({trained} trained by this invocation, which took {elapsed:.0f} s in all).",
        "",
        "Every figure is read from the run's `metrics.json`; each test accuracy was checked "
        "against the trace of its confusion matrix over the 10,000 test images. Learning rates "
        "were chosen by `twinnet sweep` on the validation split, never on test. The "
        "backpropagation behind the NumPy twin is derived in "
        f"[docs/derivations.md]({derivations_link(out)}).",
        "",
        "## Training and test error rates",
        "",
        "Error rate = 1 - accuracy. *Train* is the whole 55,000-image training split after "
        "training, *val* the 5,000-image validation split, *test* the 10,000 t10k images. "
        "Seed columns hold the seed report's figures where they are known (see below).",
        "",
        "| run | model | twin | optimizer | lr | schedule | steps | train error | val error "
        "| test error | test accuracy | seed lr | seed steps | seed train error | seed test error "
        "| wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in presets:
        c = preset.config
        if preset.id not in metrics:
            lines.append("| " + " | ".join([preset.label, c.model, c.backend, "not run yet",
                                            *[""] * 12]) + " |")
            continue
        final = metrics[preset.id]["final"]
        lines.append(
            f"| {preset.label} | {c.model} | {c.backend} | {c.optimizer} | {c.lr:g} | {c.schedule} "
            f"| {c.steps} | {percent(1 - final['train']['accuracy'])} "
            f"| {percent(1 - final['validation']['accuracy'])} "
            f"| {percent(1 - final['test']['accuracy'])} | {percent(final['test']['accuracy'])} "
            f"| {seed_cell(preset, 'seed_lr')} | {seed_cell(preset, 'seed_steps')} "
            f"| {seed_cell(preset, 'seed_train_accuracy')} "
            f"| {seed_cell(preset, 'seed_test_accuracy')} "
            f"| {metrics[preset.id]['wall_seconds']:.0f} s |")
    lines += [
        "",
        "*n/a*: the seed report is not in this repository, and the issues quote only one of its "
        "figures (P1:d: Adam, learning rate 0.001, 2,000 steps, 98.54% test accuracy); its P2:e "
        "was never run.",
        "",
        "How each learning rate was chosen:",
        "",
    ]
    lines += [f"- {p.label}: {p.lr_chosen_by}" for p in presets]
    for model in MODEL_NAMES:
        lines += model_section(model, [p for p in presets if p.config.model == model], metrics)
    lines += environment_section(presets, metrics, env)
    return "\n".join(lines) + "\n"


def derivations_link(out: Path) -> str:
    docs = Path(__file__).resolve().parents[2] / "docs" / "derivations.md"
    if docs.is_file():
        return os.path.relpath(docs, out.resolve())
    return "docs/derivations.md"  # installed without the repository beside it


def model_section(model: str, presets: list[Preset], metrics: dict[str, dict]) -> list[str]:
    lines = ["", f"## {model}", "",
             f"Architecture: {DESCRIPTIONS[model]} ({count_params(model):,} parameters, "
             f"{multiply_adds_per_image(model):,} multiply-adds per image forward).", ""]
    if any(p.id in metrics for p in presets):
        lines += [f"![both twins of {model}](twins-{model}.png)", ""]
    for preset in presets:
        c = preset.config
        lines += [f"### {preset.label}: {model}, {BACKEND_NAMES[c.backend]}", ""]
        if preset.id not in metrics:
            lines += ["Not run yet: `twinnet report` will train it.", ""]
            continue
        run = metrics[preset.id]
        final = run["final"]
        folder = f"runs/{preset.id}-{c.model}-{c.backend}"
        lines += [
            f"{c.optimizer} with learning rate {c.lr:g} ({c.schedule} schedule), {c.steps} steps "
            f"of batch {c.batch_size}, seed {c.seed}; trained in {run['train_seconds']:.0f} s. "
            f"Weights: [{folder}/weights.npz]({folder}/weights.npz).",
            "",
            "| | train | validation | test |",
            "|---|---|---|---|",
            "| accuracy | " + " | ".join(percent(final[s]["accuracy"])
                                         for s in ("train", "validation", "test")) + " |",
            "| cross-entropy | " + " | ".join(f"{final[s]['loss']:.4f}"
                                              for s in ("train", "validation", "test")) + " |",
            "",
            f"![curves]({folder}/curves.png)",
            f"![confusion matrix]({folder}/confusion.png)",
            "",
            "Test confusion matrix (rows: true digit, columns: predicted digit):",
            "",
            "| true \\ predicted | " + " | ".join(str(d) for d in range(10)) + " |",
            "|---|" + "---|" * 10,
        ]
        for digit, row in enumerate(run["confusion_matrix"]):
            lines.append(f"| **{digit}** | " + " | ".join(
                f"**{n}**" if i == digit else str(n) for i, n in enumerate(row)) + " |")
        lines.append("")
    return lines


def environment_section(presets: list[Preset], metrics: dict[str, dict], env: dict) -> list[str]:
    lines = ["", "## Environment", "",
             "| what | version |", "|---|---|"]
    versions = dict(env)
    for preset in presets:
        if preset.id in metrics:
            versions.update({k: v for k, v in metrics[preset.id]["environment"].items()
                             if k not in versions})
    for key in ("twinnet", "python", "numpy", "tensorflow", "platform", "cpu", "cpu_count"):
        if key in versions:
            lines.append(f"| {key} | {versions[key]} |")
    lines += ["", "| run | training time | wall time (incl. evaluation) |", "|---|---|---|"]
    for preset in presets:
        if preset.id in metrics:
            run = metrics[preset.id]
            lines.append(f"| {preset.label} | {run['train_seconds']:.1f} s | {run['wall_seconds']:.1f} s |")
    return lines
