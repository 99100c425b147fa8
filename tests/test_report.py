"""The report, the presets, sweeps, TensorBoard output and determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinnet.models import MODEL_NAMES
from twinnet.report import check_consistent, generate_report, load_presets
from twinnet.sweep import run_sweep, write_sweep
from twinnet.train import TrainConfig, train

MINI_PRESETS = """
[models.linear]
optimizer = "sgd"
lr = 0.5
schedule = "cosine"
steps = 60
batch_size = 100
seed = 0
lr_chosen_by = "a test"
twins = {tf = "P1:a", numpy = "P2:b"}

[models.mlp128]
optimizer = "adam"
lr = 0.002
schedule = "constant"
steps = 60
batch_size = 100
seed = 0
lr_chosen_by = "a test"
twins = {numpy = "P2:c"}

[seed_report."P2:b"]
lr = 0.5
steps = 1000
train_accuracy = 0.91
test_accuracy = 0.9
"""


def table_rows(report: str) -> list[list[str]]:
    """The cells of the error-rate table (the first table of the report)."""
    section = report.split("## Training and test error rates", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header_end = next(i for i, line in enumerate(section.splitlines()) if line.startswith("|---"))
    rows = []
    for line in section.splitlines()[header_end + 1:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert lines, "no table"
    return rows


def test_shipped_presets_cover_all_eight_runs():
    presets = load_presets()
    assert sorted(p.label for p in presets) == sorted(
        ["P1:a", "P1:b", "P1:c", "P1:d", "P2:b", "P2:c", "P2:d", "P2:e"])
    assert {(p.config.model, p.config.backend) for p in presets} == {
        (m, b) for m in MODEL_NAMES for b in ("tf", "numpy")}
    for preset in presets:
        assert "sweep" in preset.lr_chosen_by, preset.label
        twin = next(p for p in presets
                    if p.config.model == preset.config.model and p is not preset)
        assert (twin.config.lr, twin.config.steps) == (preset.config.lr, preset.config.steps)


@pytest.mark.slow
def test_report_runs_reuses_and_matches_every_confusion_matrix(tmp_path, mnist_path):
    presets_file = tmp_path / "presets.toml"
    presets_file.write_text(MINI_PRESETS)
    out = tmp_path / "report"
    path = generate_report(out=out, jobs=2, data_dir=mnist_path, presets_path=presets_file)
    report = path.read_text()
    rows = table_rows(report)
    assert [row[0] for row in rows] == ["P1:a", "P2:b", "P2:c"]
    for row in rows:
        assert all(cell for cell in row), f"empty cell in {row}"
    for preset in load_presets(presets_file):
        run = preset.run_dir(out)
        assert run.name == f"{preset.id}-{preset.config.model}-{preset.config.backend}"
        metrics = json.loads((run / "metrics.json").read_text())
        confusion = np.array(metrics["confusion_matrix"])
        from_matrix = np.trace(confusion) / confusion.sum()
        row = next(r for r in rows if r[0] == preset.label)
        assert row[10] == f"{from_matrix * 100:.2f}%"  # the test accuracy column
        assert row[9] == f"{(1 - from_matrix) * 100:.2f}%"  # the test error column
        for image in ("curves.png", "confusion.png"):
            assert (run / image).is_file() and f"{run.name}/{image}" in report
    assert "| P2:b | linear | numpy | sgd | 0.5 | cosine | 60 |" in report
    assert "| 0.5 | 1000 | 9.00% | 10.00% |" in report  # the seed's figures as error rates
    assert (out / "twins-linear.png").is_file() and "twins-linear.png" in report
    assert "derivations.md" in report

    # A second call reuses every finished run; --only retrains just the one named.
    before = {p: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    generate_report(out=out, jobs=1, data_dir=mnist_path, presets_path=presets_file)
    assert before == {p: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    presets_file.write_text(MINI_PRESETS.replace("steps = 60", "steps = 70", 1))  # linear
    generate_report(out=out, jobs=1, data_dir=mnist_path, presets_path=presets_file)
    after = {p: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert sorted(p.name for p in after if after[p] != before[p]) == ["P1a-linear-tf", "P2b-linear-numpy"]

    # --only retrains what it names, finished or not, and nothing else; a missing run
    # it does not name shows as not run.
    (out / "runs" / "P2c-mlp128-numpy" / "metrics.json").unlink()
    p1a_metrics = out / "runs" / "P1a-linear-tf" / "metrics.json"
    p1a_before = p1a_metrics.stat().st_mtime_ns
    generate_report(out=out, only="P1:a", jobs=1, data_dir=mnist_path, presets_path=presets_file)
    assert p1a_metrics.stat().st_mtime_ns != p1a_before
    assert not (out / "runs" / "P2c-mlp128-numpy" / "metrics.json").exists()
    assert "| P2:c | mlp128 | numpy | adam | 0.002 | constant | 60 | not run yet |" in (
        out / "REPORT.md").read_text()


def test_inconsistent_metrics_are_refused():
    from twinnet.errors import TwinnetError

    (preset,) = [p for p in load_presets() if p.label == "P1:a"]
    confusion = np.diag([1000] * 10).tolist()
    metrics = {"confusion_matrix": confusion,
               "final": {"test": {"accuracy": 0.99, "correct": 10_000, "count": 10_000}}}
    with pytest.raises(TwinnetError, match="disagrees with its confusion matrix"):
        check_consistent(preset, metrics)


def test_report_only_names_unknown_runs(tmp_path, mnist_path):
    from twinnet.errors import TwinnetError

    with pytest.raises(TwinnetError, match="unknown run"):
        generate_report(out=tmp_path, only="P9:z", data_dir=mnist_path)


def test_bad_presets_file(tmp_path):
    from twinnet.errors import TwinnetError

    path = tmp_path / "p.toml"
    path.write_text('[models.linear]\noptimizer = "sgd"\n')
    with pytest.raises(TwinnetError, match=r"p.toml: \[models.linear\]: missing lr, schedule"):
        load_presets(path)
    path.write_text("not = [toml")
    with pytest.raises(TwinnetError, match="cannot read presets"):
        load_presets(path)


@pytest.mark.slow
def test_sweep_ranks_by_validation_and_never_touches_test(tmp_path, mnist_path, monkeypatch):
    import twinnet.metrics

    evaluated_sizes = []
    original = twinnet.metrics.evaluate

    def spy(model, x, y):
        evaluated_sizes.append(len(y))
        return original(model, x, y)

    monkeypatch.setattr("twinnet.train.evaluate", spy)
    base = TrainConfig(model="linear", backend="numpy", optimizer="sgd", lr=0.1, steps=50)
    result = run_sweep(base, [0.01, 0.5, 1e6], workers=1, data_dir=mnist_path)
    assert 10_000 not in evaluated_sizes and 5_000 in evaluated_sizes
    points = {p["lr"]: p for p in result["points"]}
    assert points[1e6]["diverged"] and result["chosen_lr"] == 0.5
    assert points[0.5]["val_accuracy"] > points[0.01]["val_accuracy"]
    path = write_sweep(result, tmp_path)
    assert json.loads(path.read_text())["chosen_lr"] == 0.5
    assert path.with_suffix(".png").is_file()


@pytest.mark.slow
def test_sweep_in_worker_processes(tmp_path, mnist_path):
    base = TrainConfig(model="linear", backend="numpy", optimizer="sgd", lr=0.1, steps=30)
    result = run_sweep(base, [0.05, 0.3], workers=2, data_dir=mnist_path)
    assert [p["lr"] for p in result["points"]] == [0.05, 0.3]
    assert all(0.5 < p["val_accuracy"] <= 1 for p in result["points"])


def test_numpy_twin_is_bit_identical_for_a_seed(mnist):
    config = TrainConfig(model="cnn", backend="numpy", optimizer="adam", lr=0.002, steps=20,
                         seed=4)
    runs = [train(config, mnist, progress=False, final_splits=())[0].params for _ in range(2)]
    for key in runs[0]:
        assert np.array_equal(runs[0][key], runs[1][key]), key
    other, _ = train(TrainConfig(**{**config.__dict__, "seed": 5}), mnist, progress=False,
                     final_splits=())
    assert not np.array_equal(other.params["dense1/W"], runs[0]["dense1/W"])


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from twinnet.tensorboard import write_tensorboard

    metrics = {"curves": {"step": [10, 20], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6],
                          "train_accuracy": [0.7, 0.8], "val_accuracy": [0.72, 0.81]},
               "final": {"test": {"accuracy": 0.8}}}
    folder = write_tensorboard(metrics, tmp_path, "linear/numpy")
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = events.Tags()["tensors"] or events.Tags()["scalars"]
    assert "accuracy/validation" in tags and "cross_entropy/train_batches" in tags
    values = events.Tensors("accuracy/validation")
    assert [v.step for v in values] == [10, 20]
    from tensorboard.util.tensor_util import make_ndarray

    assert float(make_ndarray(values[1].tensor_proto)) == pytest.approx(0.81, rel=1e-6)


def fake_metrics(config, train_acc: float, val_acc: float, test_correct: int, seconds: float) -> dict:
    """metrics.json as a run would write it, with figures no real run would give."""
    from dataclasses import asdict

    confusion = np.zeros((10, 10), dtype=int)
    confusion[np.arange(10), np.arange(10)] = test_correct // 10
    confusion[0, 0] += test_correct % 10
    confusion[0, 1] = 10_000 - test_correct
    final = {"train": {"accuracy": train_acc, "loss": 0.0111},
             "validation": {"accuracy": val_acc, "loss": 0.0222},
             "test": {"accuracy": test_correct / 10_000, "loss": 0.0333, "correct": test_correct,
                      "count": 10_000}}
    return {"config": asdict(config), "final": final, "confusion_matrix": confusion.tolist(),
            "curves": {}, "environment": {"tensorflow": "9.9"}, "train_seconds": seconds,
            "wall_seconds": seconds + 1}


def test_report_renders_every_figure_from_the_metrics(tmp_path):
    from twinnet.report import COLUMNS, render_report

    presets_file = tmp_path / "presets.toml"
    presets_file.write_text(MINI_PRESETS)
    presets = load_presets(presets_file)
    by_label = {p.label: p for p in presets}
    metrics = {by_label["P1:a"].id: fake_metrics(by_label["P1:a"].config, 0.9876, 0.8765, 9123, 41.0),
               by_label["P2:b"].id: fake_metrics(by_label["P2:b"].config, 0.5, 0.25, 7777, 7.0)}
    for preset in presets:
        if preset.id in metrics:
            check_consistent(preset, metrics[preset.id])
    env = {"twinnet": "0.test", "python": "3.x", "numpy": "1.x", "platform": "test-os",
           "cpu": "Test CPU", "cpu_count": 3}
    report = render_report(tmp_path, presets, metrics, elapsed=12.0, trained=1, env=env)

    rows = table_rows(report)
    assert [row[0] for row in rows] == ["P1:a", "P2:b", "P2:c"]
    assert all(len(row) == len(COLUMNS) for row in rows)
    p1a, p2b, p2c = rows
    assert p1a[1:11] == ["linear", "tf", "sgd", "0.5", "cosine", "60", "1.24%", "12.35%", "8.77%", "91.23%"]
    assert p1a[-1] == "42 s" and p1a[11:15] == ["n/a"] * 4
    assert p2b[7:11] == ["50.00%", "75.00%", "22.23%", "77.77%"]
    assert p2b[11:15] == ["0.5", "1000", "9.00%", "10.00%"]  # the seed's figures as error rates
    # A preset not run yet: its settings, "not run yet", its seed cells, and nothing measured.
    assert p2c[:8] == ["P2:c", "mlp128", "numpy", "adam", "0.002", "constant", "60", "not run yet"]
    assert p2c[8:11] == ["", "", ""] and p2c[-1] == ""
    assert "Not run yet" in report.split("### P2:c", 1)[1]

    section = report.split("### P1:a", 1)[1].split("###", 1)[0]
    assert "trained in 41 s" in section and "runs/P1a-linear-tf/weights.npz" in section
    assert "| accuracy | 98.76% | 87.65% | 91.23% |" in section
    assert "| cross-entropy | 0.0111 | 0.0222 | 0.0333 |" in section
    assert "| **0** | **915** | 877 |" in section  # the confusion matrix, diagonal in bold
    assert "Test CPU (3 cores)" in report and "The 2 runs took 50 s" in report
    assert "| tensorflow | 9.9 |" in report and "| P2:b | 7.0 s | 8.0 s |" in report
    assert "{" not in report  # every placeholder of the template filled


def test_presets_errors_name_the_file_and_run(tmp_path):
    from twinnet.errors import TwinnetError

    path = tmp_path / "p.toml"
    path.write_text(MINI_PRESETS.replace("lr = 0.5", "lr = -1"))
    with pytest.raises(TwinnetError, match=r"p.toml: run P1a: lr must be a positive number, got -1"):
        load_presets(path)
    path.write_text(MINI_PRESETS.replace("twins = {numpy", "twins = {jax"))
    with pytest.raises(TwinnetError, match=r"twins: unknown key\(s\) jax"):
        load_presets(path)
    path.write_text(MINI_PRESETS.replace('[seed_report."P2:b"]', '[seed_report."P9:z"]'))
    with pytest.raises(TwinnetError, match="seed_report for unknown run"):
        load_presets(path)


def test_cli_defaults_are_the_config_defaults_and_errors_name_the_flag(capsys):
    from twinnet.cli import build_parser, config_from_args, main
    from twinnet.config import DEFAULT_LR, TrainConfig

    args = build_parser().parse_args(["train", "mlp128"])
    assert config_from_args(args) == TrainConfig(model="mlp128")
    args = build_parser().parse_args(["train", "mlp128", "--optimizer", "adam"])
    assert config_from_args(args).lr == DEFAULT_LR["adam"]
    assert main(["train", "linear", "--lr", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "twinnet: error: --lr must be a positive number, got -1.0"
    assert main(["train", "linear", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
