"""The seed report's figures, a verdict on each of its claims, and its "seed settings" runs.

The seed report is the report twinnet reproduces. Its figures live in ``seed_report.toml``
beside this module (see the comments there for each key); this module loads and checks
them, derives the accuracy each of its confusion matrices implies, judges each claimed test
accuracy against that matrix and against our rerun at the seed's own settings, and renders
the report section "The seed report, rerun".

Labels: the seed's runs are named ``P1:a`` ... ``P1:d`` (TensorFlow) and ``P2:b`` ...
``P2:e`` (NumPy), with ids ``P1a`` ... ``P2e`` as in the TOML. P2:e is in the file but was
never run by the seed report, so it has no figures and no verdict.

Seed-settings runs are named ``S-<id>`` (``S-P1a``) and labelled ``<label> (seed settings)``
(``P1:a (seed settings)``).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from twinnet.backend import BACKENDS, OPTIMIZERS
from twinnet.errors import TwinnetError
from twinnet.models import MODEL_NAMES
from twinnet.util import is_int, is_number

# Images of each digit 0..9 in MNIST's 10,000-image test set: the row sums of any correct
# test confusion matrix (rows = true digit).
MNIST_TEST_DIGIT_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# A rerun within this many percentage points of the claimed test accuracy reproduces it.
REPRODUCED_WITHIN_PP = 0.5

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
CONTRADICTS = "claim contradicts its own matrix"
NOT_RUN_YET = "not run yet"
NO_SEED_RUN = "n/a"

# The seed-settings runs train with a constant learning rate, as the seed report did.
SEED_SETTINGS_SCHEDULE = "constant"
# Keys of metrics["config"] that must match the seed settings for a rerun to count as one.
RERUN_CHECKED_KEYS = ("model", "backend", "optimizer", "lr", "steps", "batch_size", "schedule")

FIGURE_KEYS = ("optimizer", "lr", "steps", "batch_size", "train_accuracy", "train_accuracy_decimals",
               "test_accuracy", "test_accuracy_decimals", "train_error_pct", "test_error_pct", "confusion")
IDENTITY_KEYS = ("label", "model", "twin", "ran")


@dataclass(frozen=True)
class SeedRun:
    """One run of the seed report.

    ``ran`` is False only for a run the seed report never ran (P2:e); then every figure is
    None. Otherwise all are set: ``train_accuracy``/``test_accuracy`` are the claimed
    fractions (0.9711 for "97.11%"), ``*_decimals`` the decimal places of the printed
    percentage, ``*_error_pct`` the final error-rate table in percent, and ``confusion`` the
    10x10 test confusion matrix as a tuple of rows (row = true digit, column = predicted).
    """

    id: str
    label: str
    model: str
    twin: str
    ran: bool
    optimizer: str | None = None
    lr: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    train_accuracy: float | None = None
    train_accuracy_decimals: int | None = None
    test_accuracy: float | None = None
    test_accuracy_decimals: int | None = None
    train_error_pct: float | None = None
    test_error_pct: float | None = None
    confusion: tuple[tuple[int, ...], ...] | None = None


@dataclass(frozen=True)
class SeedReport:
    """All runs of the seed report in file order (P1:a ... P2:e), and the file they came from."""

    source: Path
    runs: tuple[SeedRun, ...]

    def get(self, label: str) -> SeedRun | None:
        """The run labelled ``label`` ("P1:a"), or None if the seed report has no such run."""
        return next((run for run in self.runs if run.label == label), None)


@dataclass(frozen=True)
class Verdict:
    """The outcome for one seed run and the figures that decide it.

    ``outcome`` is one of REPRODUCED, NOT_REPRODUCED, CONTRADICTS, NOT_RUN_YET, NO_SEED_RUN;
    ``figures`` is e.g. "claim 98.19% vs matrix 90.95%", empty when there are none.
    """

    outcome: str
    figures: str = ""

    def __str__(self) -> str:
        return f"{self.outcome} ({self.figures})" if self.figures else self.outcome


@dataclass(frozen=True)
class SeedSettingsRun:
    """One of the eight runs at the seed report's own settings.

    ``id`` is ``S-P1a``, ``label`` ``P1:a (seed settings)``, ``seed_label`` the seed run it
    reruns (``P1:a``), and ``config`` holds exactly the keyword arguments of
    ``twinnet.config.TrainConfig``, so ``TrainConfig(**run.config)`` builds the run.
    """

    id: str
    label: str
    seed_label: str
    config: dict[str, Any]


def default_seed_report_path() -> Path:
    return Path(str(resources.files("twinnet") / "seed_report.toml"))


def confusion_problems(matrix: Sequence[Sequence[Any]]) -> list[str]:
    """What is wrong with a transcribed MNIST test confusion matrix; empty if nothing.

    A correct one is 10x10 non-negative integers whose row d (true digit d) sums to
    MNIST_TEST_DIGIT_COUNTS[d]. Any single changed entry breaks its row's sum.
    """
    if not isinstance(matrix, Sequence) or len(matrix) != 10:
        return ["expected 10 rows"]
    problems = []
    for digit, (row, count) in enumerate(zip(matrix, MNIST_TEST_DIGIT_COUNTS, strict=True)):
        if not isinstance(row, Sequence) or len(row) != 10:
            problems.append(f"row {digit}: expected 10 entries")
        elif not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row):
            problems.append(f"row {digit}: expected non-negative integers")
        elif sum(row) != count:
            problems.append(f"row {digit} sums to {sum(row)}, but the test set has {count} images of {digit}")
    return problems


def implied_accuracy(matrix: Sequence[Sequence[int]]) -> float:
    """Accuracy a confusion matrix implies: its trace over its total (square, total > 0)."""
    return sum(matrix[i][i] for i in range(len(matrix))) / sum(sum(row) for row in matrix)


def format_claim(fraction: float, decimals: int) -> str:
    """A claimed accuracy at the report's precision: the seed report's printed digits, less
    the trailing zeros beyond two decimals, which add nothing: (0.9785, 4) -> "97.85%" (printed
    "97.8500%"), (0.929, 1) -> "92.9%", (0.9710, 2) -> "97.10%"."""
    digits = f"{fraction * 100:.{decimals}f}"
    while decimals > 2 and digits.endswith("0"):
        digits, decimals = digits[:-1], decimals - 1
    return f"{digits}%"


def percent(fraction: float) -> str:
    """A measured accuracy with two decimals: 0.9288 -> "92.88%"."""
    return f"{fraction * 100:.2f}%"


KIND_TEXT = {"str": "a string", "bool": "true or false", "positive": "a positive number",
             "count": "a positive integer", "decimals": "an integer from 0 to 6",
             "fraction": "a fraction from 0 to 1", "percent": "a percentage from 0 to 100"}


def _check_value(source: Path, where: str, value: Any, kind: str) -> None:
    """Raise one TwinnetError naming the file and key if ``value`` is not of ``kind`` (KIND_TEXT)."""
    number, integer = is_number(value), is_int(value)
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "positive": number and value > 0,
        "count": integer and value >= 1,
        "decimals": integer and 0 <= value <= 6,
        "fraction": number and 0 <= value <= 1,
        "percent": number and 0 <= value <= 100,
    }[kind]
    if not ok:
        raise TwinnetError(f"{source}: {where}: expected {KIND_TEXT[kind]}, got {value!r}")


FIGURE_KINDS = {"optimizer": "str", "lr": "positive", "steps": "count", "batch_size": "count",
                "train_accuracy": "fraction", "train_accuracy_decimals": "decimals",
                "test_accuracy": "fraction", "test_accuracy_decimals": "decimals",
                "train_error_pct": "percent", "test_error_pct": "percent"}


def _load_run(source: Path, run_id: str, entry: Any) -> SeedRun:
    where = f"runs.{run_id}"
    if not isinstance(entry, dict):
        raise TwinnetError(f"{source}: {where}: expected a table")
    missing = [key for key in IDENTITY_KEYS if key not in entry]
    unknown = sorted(set(entry) - {*IDENTITY_KEYS, *FIGURE_KEYS})
    if missing or unknown:
        raise TwinnetError(f"{source}: {where}: missing keys {missing} or unknown keys {unknown}")
    for key in ("label", "model", "twin"):
        _check_value(source, f"{where}.{key}", entry[key], "str")
    _check_value(source, f"{where}.ran", entry["ran"], "bool")
    if entry["model"] not in MODEL_NAMES:
        raise TwinnetError(f"{source}: {where}.model: unknown model {entry['model']!r}")
    if entry["twin"] not in BACKENDS:
        raise TwinnetError(f"{source}: {where}.twin: expected one of {BACKENDS}, got {entry['twin']!r}")
    figures = [key for key in FIGURE_KEYS if key in entry]
    if not entry["ran"]:
        if figures:
            raise TwinnetError(f"{source}: {where}: a run that never ran has no figures, got {figures}")
        return SeedRun(run_id, entry["label"], entry["model"], entry["twin"], False)
    missing = [key for key in FIGURE_KEYS if key not in entry]
    if missing:
        raise TwinnetError(f"{source}: {where}: missing figures {missing}")
    for key, kind in FIGURE_KINDS.items():
        _check_value(source, f"{where}.{key}", entry[key], kind)
    if entry["optimizer"] not in OPTIMIZERS:
        raise TwinnetError(f"{source}: {where}.optimizer: expected one of {OPTIMIZERS}, "
                           f"got {entry['optimizer']!r}")
    problems = confusion_problems(entry["confusion"])
    if problems:
        raise TwinnetError(f"{source}: {where}.confusion: {'; '.join(problems)}")
    return SeedRun(run_id, entry["label"], entry["model"], entry["twin"], True,
                   **{key: entry[key] for key in FIGURE_KINDS},
                   confusion=tuple(tuple(row) for row in entry["confusion"]))


def load_seed_report(path: str | os.PathLike | None = None) -> SeedReport:
    """Read and check the seed report's figures (default: the packaged seed_report.toml).

    Raises one TwinnetError naming the file and the key for anything malformed, including a
    confusion matrix whose rows do not sum to MNIST's per-digit test counts.
    """
    source = Path(path) if path is not None else default_seed_report_path()
    try:
        table = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TwinnetError(f"{source}: cannot read the seed report's figures ({exc})") from None
    runs = table.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise TwinnetError(f"{source}: no [runs.*] tables")
    loaded = tuple(_load_run(source, run_id, entry) for run_id, entry in runs.items())
    labels = [run.label for run in loaded]
    if len(set(labels)) != len(labels):
        raise TwinnetError(f"{source}: duplicate run labels in {labels}")
    return SeedReport(source, loaded)


def claim_within_rounding(claim: float, decimals: int, value: float) -> bool:
    """Whether ``value`` could have been printed as ``claim`` with ``decimals`` places.

    The rule: a percentage printed with d decimal places stands for every value that rounds
    to it, i.e. within half a unit of its last place (inclusive, as ties may round either
    way): "92.9%" covers 92.85%..92.95%, "97.8500%" covers 97.84995%..97.85005%. The tiny
    slack absorbs binary floating point, not rounding.
    """
    half_unit = 0.5 * 10.0 ** -(decimals + 2)  # in fractions: one percent is 0.01
    return abs(value - claim) <= half_unit + 1e-12


def verdict(run: SeedRun, rerun_accuracy: float | None) -> Verdict:
    """Judge one seed run's claimed test accuracy.

    In order: no seed run -> NO_SEED_RUN; the claim is outside its printed rounding of the
    accuracy its own confusion matrix implies -> CONTRADICTS (decided by the seed's data
    alone, so even before a rerun); no rerun yet -> NOT_RUN_YET; our rerun's test accuracy
    (a fraction) within REPRODUCED_WITHIN_PP of the claim -> REPRODUCED, else NOT_REPRODUCED.
    """
    if not run.ran:
        return Verdict(NO_SEED_RUN)
    claim = format_claim(run.test_accuracy, run.test_accuracy_decimals)
    implied = implied_accuracy(run.confusion)
    if not claim_within_rounding(run.test_accuracy, run.test_accuracy_decimals, implied):
        return Verdict(CONTRADICTS, f"claim {claim} vs matrix {percent(implied)}")
    if rerun_accuracy is None:
        return Verdict(NOT_RUN_YET)
    difference_pp = (rerun_accuracy - run.test_accuracy) * 100
    outcome = REPRODUCED if abs(difference_pp) <= REPRODUCED_WITHIN_PP + 1e-9 else NOT_REPRODUCED
    return Verdict(outcome, f"rerun {percent(rerun_accuracy)} vs claim {claim}: {difference_pp:+.2f} pp")


def settings_source(seed: SeedReport, run: SeedRun) -> SeedRun:
    """The seed run whose settings rerun ``run``: itself, or for a run the seed never ran
    (P2:e) the first run of the same model that it did run (P1:d)."""
    if run.ran:
        return run
    donor = next((other for other in seed.runs if other.ran and other.model == run.model), None)
    if donor is None:
        raise TwinnetError(f"{seed.source}: runs.{run.id}: no run of model {run.model!r} "
                           "to take settings from")
    return donor


def seed_settings_runs(seed: SeedReport) -> list[SeedSettingsRun]:
    """The runs at the seed report's own settings, one per seed run (eight), in file order.

    Each trains the seed run's model on the twin of its label with the seed's optimizer,
    learning rate, step budget and batch size, a constant learning rate, seed 0 and the
    default evaluation interval. P2:e borrows P1:d's settings (see ``settings_source``).
    """
    runs = []
    for run in seed.runs:
        source = settings_source(seed, run)
        config = {"model": run.model, "backend": run.twin, "optimizer": source.optimizer,
                  "lr": source.lr, "steps": source.steps, "batch_size": source.batch_size,
                  "seed": 0, "eval_every": 0, "schedule": SEED_SETTINGS_SCHEDULE}
        runs.append(SeedSettingsRun(f"S-{run.id}", f"{run.label} (seed settings)", run.label, config))
    return runs


def seed_columns(seed: SeedReport, label: str) -> dict[str, str]:
    """The seed report's cells for the main table's row ``label`` ("P1:a").

    Keys: ``seed_lr``, ``seed_steps``, ``seed_train_error``, ``seed_test_error`` (errors from
    the seed's error-rate table, in percent as printed: "3.4%"). Each is "n/a" exactly where
    the seed report has no figure: P2:e, or a label it does not have.
    """
    run = seed.get(label)
    if run is None or not run.ran:
        return dict.fromkeys(("seed_lr", "seed_steps", "seed_train_error", "seed_test_error"), "n/a")
    return {"seed_lr": f"{run.lr:g}", "seed_steps": str(run.steps),
            "seed_train_error": f"{run.train_error_pct:g}%", "seed_test_error": f"{run.test_error_pct:g}%"}


def check_rerun_config(label: str, expected: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Refuse metrics that are not a rerun at ``expected`` (a SeedSettingsRun.config)."""
    config = metrics.get("config", {})
    for key in RERUN_CHECKED_KEYS:
        got, want = config.get(key), expected[key]
        same = math.isclose(got, want, rel_tol=1e-12) if key == "lr" and got is not None else got == want
        if not same:
            raise TwinnetError(f"rerun of {label}: config {key} is {got!r}, "
                               f"but the seed settings have {want!r}")


def _settings_cell(seed: SeedReport, run: SeedRun, config: Mapping[str, Any]) -> str:
    cell = f"{config['optimizer']}, lr {config['lr']:g}, {config['steps']} steps"
    source = settings_source(seed, run)
    return cell if source is run else f"{cell} ({source.label}'s)"


def render_seed_section(seed: SeedReport, reruns: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the report section "The seed report, rerun".

    ``reruns`` maps a seed label ("P1:a") to the metrics.json dict of our run at that
    label's seed settings (``seed_settings_runs``); labels without one show "not run yet".
    Reads ``metrics["final"]["test"]["accuracy"]`` and checks ``metrics["config"]`` against
    the seed settings (a TwinnetError if they differ). One table row per seed run, then a
    paragraph generated from the verdicts.
    """
    settings = {run.seed_label: run.config for run in seed_settings_runs(seed)}
    lines = [
        "## The seed report, rerun",
        "",
        "Each run of the seed report rerun at its own settings (its optimizer, learning rate and "
        "step budget; batch 100, constant learning rate) by the twin of its label: TensorFlow for "
        "P1, NumPy for P2. *Its matrix implies*: the trace of the seed report's own test confusion "
        "matrix over its 10,000 images. *Claim contradicts its own matrix*: the claimed test "
        "accuracy is further from that than its printed rounding allows. Otherwise *reproduced*: "
        f"our rerun is within {REPRODUCED_WITHIN_PP:g} pp of the claim; else *not reproduced*.",
        "",
        "| run | model | twin | rerun settings | seed's claimed test accuracy | its matrix implies "
        "| our rerun at its settings | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts: dict[str, Verdict] = {}
    for run in seed.runs:
        metrics = reruns.get(run.label)
        if metrics is not None:
            check_rerun_config(run.label, settings[run.label], metrics)
        rerun = None if metrics is None else metrics["final"]["test"]["accuracy"]
        verdicts[run.label] = verdict(run, rerun)
        claim = format_claim(run.test_accuracy, run.test_accuracy_decimals) if run.ran else "n/a"
        implied = percent(implied_accuracy(run.confusion)) if run.ran else "n/a"
        lines.append(
            f"| {run.label} | {run.model} | {run.twin} | {_settings_cell(seed, run, settings[run.label])} "
            f"| {claim} | {implied} | {NOT_RUN_YET if rerun is None else percent(rerun)} "
            f"| {verdicts[run.label]} |")
    lines += ["", conclusion(seed, verdicts)]
    return lines


def _listing(labels_figures: list[tuple[str, str]]) -> str:
    return ", ".join(f"{label} ({figures})" if figures else label for label, figures in labels_figures)


def conclusion(seed: SeedReport, verdicts: Mapping[str, Verdict]) -> str:
    """The factual paragraph under the table, generated from the verdicts (seed label -> Verdict)."""
    ran = [run for run in seed.runs if run.ran]
    by_outcome: dict[str, list[tuple[str, str]]] = {}
    for run in seed.runs:
        found = verdicts[run.label]
        by_outcome.setdefault(found.outcome, []).append((run.label, found.figures))
    contradicting = by_outcome.get(CONTRADICTS, [])
    if contradicting:
        sentences = [f"{len(contradicting)} of the seed report's {len(ran)} claimed test accuracies "
                     f"contradict its own confusion matrices: {_listing(contradicting)}."]
    else:
        sentences = [f"All {len(ran)} of the seed report's claimed test accuracies agree with its own "
                     "confusion matrices within their printed rounding."]
    for outcome, text in ((REPRODUCED, "Our reruns at the seed's settings reproduce"),
                          (NOT_REPRODUCED, "Our reruns at the seed's settings do not reproduce"),
                          (NOT_RUN_YET, "Not rerun yet")):
        if by_outcome.get(outcome):
            sentences.append(f"{text}: {_listing(by_outcome[outcome])}.")
    for label, _ in by_outcome.get(NO_SEED_RUN, []):
        run = seed.get(label)
        sentences.append(f"{label} was never run by the seed report, so it has no claim to check; "
                         f"our rerun uses {settings_source(seed, run).label}'s settings.")
    return " ".join(sentences)
