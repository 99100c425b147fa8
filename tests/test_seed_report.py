"""The seed report's transcribed figures, the verdicts on its claims, and its seed-settings runs.

Fast: no training. Reruns are fake metrics dicts shaped like metrics.json.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from pathlib import Path

import pytest

from twinnet.errors import TwinnetError
from twinnet.seed_report import (
    CONTRADICTS,
    MNIST_TEST_DIGIT_COUNTS,
    NO_SEED_RUN,
    NOT_REPRODUCED,
    NOT_RUN_YET,
    REPRODUCED,
    claim_within_rounding,
    confusion_problems,
    default_seed_report_path,
    implied_accuracy,
    load_seed_report,
    render_seed_section,
    seed_columns,
    seed_settings_runs,
    verdict,
)
from twinnet.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
LABELS = ["P1:a", "P1:b", "P1:c", "P1:d", "P2:b", "P2:c", "P2:d", "P2:e"]


@pytest.fixture(scope="module")
def seed():
    return load_seed_report()


def ran(seed):
    return [run for run in seed.runs if run.ran]


def fake_metrics(seed, label: str, accuracy: float) -> dict:
    """A metrics.json stand-in for our run at ``label``'s seed settings."""
    config = next(run.config for run in seed_settings_runs(seed) if run.seed_label == label)
    return {"final": {"test": {"accuracy": accuracy}}, "config": dict(config, eval_every=40)}


def row_of(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(f"| {label} |"))


# --- transcription --------------------------------------------------------------------------


def test_seed_report_has_every_run_and_p2e_never_ran(seed):
    assert [run.label for run in seed.runs] == LABELS
    assert [run.label for run in seed.runs if not run.ran] == ["P2:e"]
    p2e = seed.get("P2:e")
    assert p2e.confusion is None and p2e.test_accuracy is None and p2e.lr is None


def test_every_matrix_row_sums_to_the_digit_count(seed):
    for run in ran(seed):
        assert confusion_problems(run.confusion) == [], run.label
        assert [sum(row) for row in run.confusion] == list(MNIST_TEST_DIGIT_COUNTS)


def test_the_check_catches_any_single_changed_entry(seed):
    for run in ran(seed):
        for i in range(10):
            for j in range(10):
                changed = [list(row) for row in run.confusion]
                changed[i][j] += 1
                problems = confusion_problems(changed)
                assert problems and f"row {i}" in problems[0], (run.label, i, j)


def test_loading_a_changed_matrix_fails_naming_file_and_key(tmp_path):
    table = tomllib.loads(default_seed_report_path().read_text(encoding="utf-8"))
    table["runs"]["P2d"]["confusion"][9][9] = 97511  # the extraction noise, left in
    path = tmp_path / "seed.toml"
    path.write_text(toml_dump(table), encoding="utf-8")
    with pytest.raises(TwinnetError, match=r"seed\.toml: runs\.P2d\.confusion: row 9 sums to"):
        load_seed_report(path)


def test_claims_agree_with_the_error_table_and_their_printed_places(seed):
    # In the seed report every error in its table is 100 - the claimed accuracy.
    for run in ran(seed):
        assert run.train_error_pct == pytest.approx(100 - run.train_accuracy * 100, abs=1e-9), run.label
        assert run.test_error_pct == pytest.approx(100 - run.test_accuracy * 100, abs=1e-9), run.label
        for fraction, places in ((run.train_accuracy, run.train_accuracy_decimals),
                                 (run.test_accuracy, run.test_accuracy_decimals)):
            assert round(fraction * 100, places) == pytest.approx(fraction * 100, abs=1e-9), run.label


def test_implied_accuracy_is_trace_over_total():
    assert implied_accuracy([[3, 1], [0, 4]]) == pytest.approx(7 / 8)


# --- verdicts -------------------------------------------------------------------------------


def test_rounding_rule():
    assert claim_within_rounding(0.929, 1, 0.9288)  # "92.9%" covers 92.85..92.95
    assert claim_within_rounding(0.929, 1, 0.9285)
    assert not claim_within_rounding(0.929, 1, 0.9284)
    assert claim_within_rounding(0.9785, 4, 0.9785)  # "97.8500%"
    assert not claim_within_rounding(0.9785, 4, 0.9786)


def test_p1_claims_agree_with_their_matrices_and_p2_claims_do_not(seed):
    outcomes = {run.label: verdict(run, None).outcome for run in seed.runs}
    assert outcomes == {"P1:a": NOT_RUN_YET, "P1:b": NOT_RUN_YET, "P1:c": NOT_RUN_YET,
                        "P1:d": NOT_RUN_YET, "P2:b": CONTRADICTS, "P2:c": CONTRADICTS,
                        "P2:d": CONTRADICTS, "P2:e": NO_SEED_RUN}
    assert verdict(seed.get("P2:b"), 0.9).figures == "claim 98.19% vs matrix 90.95%"


def test_a_claim_outside_its_rounding_contradicts(seed):
    claims_92_8 = dataclasses.replace(seed.get("P1:a"), test_accuracy=0.928)  # matrix: 92.88%
    found = verdict(claims_92_8, 0.928)
    assert (found.outcome, found.figures) == (CONTRADICTS, "claim 92.8% vs matrix 92.88%")


def test_reproduced_within_half_a_point_inclusive(seed):
    p1b = seed.get("P1:b")  # claims 97.11%
    assert verdict(p1b, 0.9661).outcome == REPRODUCED
    assert verdict(p1b, 0.9761).outcome == REPRODUCED
    assert verdict(p1b, 0.9660).outcome == NOT_REPRODUCED
    assert verdict(p1b, 0.9762).outcome == NOT_REPRODUCED


def test_renderer_gives_each_verdict_with_its_figures(seed):
    reruns = {"P1:a": fake_metrics(seed, "P1:a", 0.9285),
              "P1:b": fake_metrics(seed, "P1:b", 0.9600),
              "P2:b": fake_metrics(seed, "P2:b", 0.9200),
              "P2:e": fake_metrics(seed, "P2:e", 0.9850)}
    lines = render_seed_section(seed, reruns)
    assert lines[0] == "## The seed report, rerun"
    assert row_of(lines, "P1:a").endswith(
        "| 92.9% | 92.88% | 92.85% | reproduced (rerun 92.85% vs claim 92.9%: -0.05 pp) |")
    assert row_of(lines, "P1:b").endswith(
        "| 97.11% | 97.11% | 96.00% | not reproduced (rerun 96.00% vs claim 97.11%: -1.11 pp) |")
    assert row_of(lines, "P2:b").endswith(
        "| 98.19% | 90.95% | 92.00% | claim contradicts its own matrix (claim 98.19% vs matrix 90.95%) |")
    assert row_of(lines, "P1:c").endswith("| 97.85% | 97.85% | not run yet | not run yet |")
    assert row_of(lines, "P2:c").endswith(
        "| 98.53% | 92.65% | not run yet "
        "| claim contradicts its own matrix (claim 98.53% vs matrix 92.65%) |")
    assert row_of(lines, "P2:e").endswith("(P1:d's) | n/a | n/a | 98.50% | n/a |")
    # "n/a" only where the seed report has no figure: P2:e's claim, matrix and verdict.
    assert [label for label in LABELS if "n/a" in row_of(lines, label)] == ["P2:e"]
    paragraph = lines[-1]
    assert paragraph.startswith(
        "3 of the seed report's 7 claimed test accuracies contradict its own confusion matrices")
    for figures in ("P2:b (claim 98.19% vs matrix 90.95%)", "P2:c (claim 98.53% vs matrix 92.65%)",
                    "P2:d (claim 99.51% vs matrix 97.56%)", "reproduce: P1:a (rerun 92.85%",
                    "do not reproduce: P1:b (rerun 96.00%", "Not rerun yet: P1:c, P1:d."):
        assert figures in paragraph


def test_renderer_refuses_a_rerun_at_other_settings(seed):
    metrics = fake_metrics(seed, "P1:a", 0.93)
    metrics["config"]["lr"] = 1.0
    with pytest.raises(TwinnetError, match="rerun of P1:a: config lr is 1.0"):
        render_seed_section(seed, {"P1:a": metrics})


def test_seed_columns_are_na_only_without_a_seed_figure(seed):
    assert seed_columns(seed, "P1:a") == {"seed_lr": "0.6", "seed_steps": "20000",
                                          "seed_train_error": "3.4%", "seed_test_error": "7.1%"}
    assert seed_columns(seed, "P1:d")["seed_train_error"] == "0%"
    for label in LABELS[:-1]:
        assert "n/a" not in seed_columns(seed, label).values(), label
    assert set(seed_columns(seed, "P2:e").values()) == {"n/a"}


# --- seed-settings runs ---------------------------------------------------------------------


def test_seed_settings_runs(seed):
    runs = {run.seed_label: run for run in seed_settings_runs(seed)}
    assert list(runs) == LABELS
    as_printed = {"P1:a": (0.6, 20000), "P1:b": (0.5, 10000), "P1:c": (0.95, 10000), "P1:d": (0.001, 2000),
                  "P2:b": (0.01, 10000), "P2:c": (0.01, 10000), "P2:d": (0.07, 10000), "P2:e": (0.001, 2000)}
    train_config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for label, run in runs.items():
        c = run.config
        assert set(c) == train_config_fields
        assert run.id == "S-" + label.replace(":", "") and run.label == f"{label} (seed settings)"
        assert (c["lr"], c["steps"]) == as_printed[label]
        assert (c["batch_size"], c["schedule"], c["seed"]) == (100, "constant", 0)
        assert c["optimizer"] == ("adam" if label in ("P1:d", "P2:e") else "sgd")
        assert c["backend"] == ("tf" if label.startswith("P1") else "numpy")
        assert c["model"] == seed.get(label).model
        TrainConfig(**c)
    p1d, p2e = runs["P1:d"].config, runs["P2:e"].config
    assert p2e == dict(p1d, backend="numpy")


# --- loading --------------------------------------------------------------------------------


def test_malformed_files_fail_naming_file_and_key(tmp_path):
    good = tomllib.loads(default_seed_report_path().read_text(encoding="utf-8"))
    path = tmp_path / "seed.toml"
    path.write_text("runs = [", encoding="utf-8")
    with pytest.raises(TwinnetError, match="seed.toml: cannot read"):
        load_seed_report(path)
    cases = [(("P1a", "lr"), "text", r"runs\.P1a\.lr: expected a positive number"),
             (("P1b", "test_accuracy"), 97.11, r"runs\.P1b\.test_accuracy: expected a fraction"),
             (("P2e", "lr"), 0.001, r"runs\.P2e: a run that never ran has no figures"),
             (("P1c", "optimizer"), "rmsprop", r"runs\.P1c\.optimizer: expected one of"),
             (("P1d", "model"), "resnet", r"runs\.P1d\.model: unknown model")]
    for (run_id, key), value, message in cases:
        table = copy.deepcopy(good)
        table["runs"][run_id][key] = value
        path.write_text(toml_dump(table), encoding="utf-8")
        with pytest.raises(TwinnetError, match=message):
            load_seed_report(path)
    table = copy.deepcopy(good)
    del table["runs"]["P2b"]["steps"]
    path.write_text(toml_dump(table), encoding="utf-8")
    with pytest.raises(TwinnetError, match=r"runs\.P2b: missing figures \['steps'\]"):
        load_seed_report(path)


def test_seed_figures_ship_with_the_package():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "seed_report.toml" in pyproject["tool"]["setuptools"]["package-data"]["twinnet"]


def toml_dump(table: dict) -> str:
    """Just enough TOML for the seed file's shape: [runs.X] tables of scalars and int matrices."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return repr(v)

    lines = []
    for run_id, entry in table["runs"].items():
        lines.append(f"[runs.{run_id}]")
        lines += [f"{key} = {value(v)}" for key, v in entry.items()]
    return "\n".join(lines) + "\n"
