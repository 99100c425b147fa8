"""The report, the presets, sweeps, TensorBoard output and determinism."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from twinnet.errors import TwinnetError
from twinnet.models import NAMED_MODELS
from twinnet.report import check_consistent, generate_report, load_presets
from twinnet.sweep import run_sweep, write_sweep
from twinnet.training import TrainConfig, train

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


def test_shipped_presets_cover_all_eight_runs_and_both_examples():
    presets = load_presets()
    assert sorted(p.label for p in presets) == sorted(
        ["P1:a", "P1:b", "P1:c", "P1:d", "P2:b", "P2:c", "P2:d", "P2:e", "E1:a", "E2:a", "E1:b", "E2:b"])
    assert {(p.config.model, p.config.backend) for p in presets} == {
        (m, b) for m in NAMED_MODELS for b in ("tf", "numpy")}
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
    path = generate_report(out=out, jobs=2, data_dir=mnist_path, presets_path=presets_file,
                           assignment_settings=False)
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
        assert row[11] == f"{from_matrix * 100:.2f}%"  # the test accuracy column
        assert row[10] == f"{(1 - from_matrix) * 100:.2f}%"  # the test error column
        for image in ("curves.png", "confusion.png"):
            assert (run / image).is_file() and f"{run.name}/{image}" in report
    assert "| P2:b | linear | numpy | sgd | 0.5 | cosine | 60 | 1 |" in report
    assert "| 0.01 | 10000 | 1.8% | 1.81% |" in report  # the assignment report's figures for P2:b
    assert (out / "twins-linear.png").is_file() and "twins-linear.png" in report
    assert "derivations.md" in report

    # A second call reuses every finished run; --only retrains just the one named.
    before = {p: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    generate_report(out=out, jobs=1, data_dir=mnist_path, presets_path=presets_file,
                    assignment_settings=False)
    assert before == {p: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    presets_file.write_text(MINI_PRESETS.replace("steps = 60", "steps = 70", 1))  # linear
    generate_report(out=out, jobs=1, data_dir=mnist_path, presets_path=presets_file,
                    assignment_settings=False)
    after = {p: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert sorted(p.name for p in after if after[p] != before[p]) == ["P1a-linear-tf", "P2b-linear-numpy"]

    # --only retrains what it names, finished or not, and nothing else; a missing run
    # it does not name shows as not run.
    (out / "runs" / "P2c-mlp128-numpy" / "metrics.json").unlink()
    p1a_metrics = out / "runs" / "P1a-linear-tf" / "metrics.json"
    p1a_before = p1a_metrics.stat().st_mtime_ns
    generate_report(out=out, only="P1:a", jobs=1, data_dir=mnist_path, presets_path=presets_file,
                    assignment_settings=False)
    assert p1a_metrics.stat().st_mtime_ns != p1a_before
    assert not (out / "runs" / "P2c-mlp128-numpy" / "metrics.json").exists()
    assert "| P2:c | mlp128 | numpy | adam | 0.002 | constant | 60 | | not run yet |" in (
        out / "REPORT.md").read_text()


@pytest.mark.slow
def test_report_with_two_seeds_writes_seed_folders(tmp_path, mnist_path):
    from twinnet.weights import load_weights

    presets_file = tmp_path / "presets.toml"
    presets_file.write_text(MINI_PRESETS.split("[models.mlp128]")[0].replace("steps = 60", "steps = 30"))
    out = tmp_path / "report"
    report = generate_report(out=out, jobs=1, data_dir=mnist_path, presets_path=presets_file, seeds=2,
                             assignment_settings=False).read_text()
    for folder in ("P1a-linear-tf", "P2b-linear-numpy"):
        seeds = [json.loads((out / "runs" / folder / sub / "metrics.json").read_text())["config"]["seed"]
                 for sub in ("", "seed-1")]
        assert seeds == [0, 1], folder
    weights = [load_weights(out / "runs/P2b-linear-numpy" / sub / "weights.npz")[0]["dense1/W"]
               for sub in ("", "seed-1")]
    assert not np.array_equal(*weights)  # each seed its own initial weights and batches
    assert "| linear | P1:a − P2:b | 2 |" in report and "over 2 seeds the twins differ" in report
    assert (out / "twins-linear.png").is_file()


TINY_SPEC = """
name = "pooled_linear"
[[layers]]
type = "avgpool2d"
size = 4
[[layers]]
type = "flatten"
[[layers]]
type = "dense"
units = 10
"""


@pytest.mark.slow
def test_report_of_a_spec_file_preset_names_runs_after_the_spec(tmp_path, mnist_path, monkeypatch):
    from twinnet.weights import load_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_net.toml").write_text(TINY_SPEC)
    presets_file = tmp_path / "presets.toml"
    presets_file.write_text(MINI_PRESETS.split("[models.mlp128]")[0]
                            .replace("[models.linear]", '[models."my_net.toml"]')
                            .replace('"P1:a"', '"X1:a"').replace('"P2:b"', '"X2:a"'))
    report = generate_report(out=tmp_path / "report", jobs=1, data_dir=mnist_path, presets_path=presets_file,
                             assignment_settings=False).read_text()
    assert "## pooled_linear\n" in report and "avgpool2d -> flatten -> dense" in report
    assert "| X1:a | pooled_linear | tf |" in report and "| pooled_linear | X1:a − X2:a | 1 |" in report
    params, meta = load_weights(tmp_path / "report/runs/X2a-pooled_linear-numpy/weights.npz")
    assert meta["model"] == "pooled_linear" and meta["spec"]["layers"][0] == {"type": "avgpool2d", "size": 4}
    assert (tmp_path / "report/twins-pooled_linear.png").is_file()


def test_a_bad_spec_in_presets_is_refused_before_training(tmp_path):
    (tmp_path / "my_net.toml").write_text(TINY_SPEC.replace("units = 10", "units = 7"))
    presets_file = tmp_path / "presets.toml"
    presets_file.write_text(MINI_PRESETS.split("[models.mlp128]")[0]
                            .replace("[models.linear]", f'[models."{tmp_path / "my_net.toml"}"]'))
    with pytest.raises(TwinnetError, match=r"my_net.toml: layer 3 \(dense\): units: the last layer"):
        generate_report(out=tmp_path / "report", presets_path=presets_file)
    assert not (tmp_path / "report").exists()


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

    monkeypatch.setattr("twinnet.training.evaluate", spy)
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


def fake_metrics(config, train_acc: float, val_acc: float, test_correct: int, seconds: float,
                 curves: dict | None = None) -> dict:
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
            "curves": curves or {}, "environment": {"tensorflow": "9.9"}, "train_seconds": seconds,
            "wall_seconds": seconds + 1}


ENV = {"twinnet": "0.test", "python": "3.x", "numpy": "1.x", "platform": "test-os",
       "cpu": "Test CPU", "cpu_count": 3}


def mini_presets(tmp_path):
    presets_file = tmp_path / "presets.toml"
    presets_file.write_text(MINI_PRESETS)
    return load_presets(presets_file)


def seed_runs(preset, seeds: int, tests: list[int], seconds: float = 10.0) -> list[dict]:
    """Fake metrics of ``preset``'s seeds 0..seeds-1, the k-th with ``tests[k]`` correct test images."""
    return [fake_metrics(preset.with_seed(k, seeds).config, 0.99 - k / 100, 0.98 - k / 100, tests[k],
                         seconds + k) for k in range(seeds)]


def test_report_renders_every_figure_from_the_metrics(tmp_path):
    from twinnet.report import COLUMNS, render_report

    presets = mini_presets(tmp_path)
    by_label = {p.label: p for p in presets}
    metrics = {by_label["P1:a"].id: [fake_metrics(by_label["P1:a"].config, 0.9876, 0.8765, 9123, 41.0)],
               by_label["P2:b"].id: [fake_metrics(by_label["P2:b"].config, 0.5, 0.25, 7777, 7.0)]}
    for preset in presets:
        for run in metrics.get(preset.id, []):
            check_consistent(preset, run)
    report = render_report(tmp_path, presets, metrics, elapsed=12.0, trained=1, env=ENV)

    rows = table_rows(report)
    assert [row[0] for row in rows] == ["P1:a", "P2:b", "P2:c"]
    assert all(len(row) == len(COLUMNS) for row in rows)
    p1a, p2b, p2c = rows
    assert p1a[1:12] == ["linear", "tf", "sgd", "0.5", "cosine", "60", "1", "1.24%", "12.35%", "8.77%",
                         "91.23%"]
    assert p1a[-1] == "42 s"
    assert p1a[12:16] == ["0.6", "20000", "3.4%", "7.1%"]  # the assignment report's P1:a figures
    assert p2b[8:12] == ["50.00%", "75.00%", "22.23%", "77.77%"]
    assert p2b[12:16] == ["0.01", "10000", "1.8%", "1.81%"]
    # A preset not run yet: its settings, "not run yet", its seed cells, and nothing measured.
    assert p2c[:9] == ["P2:c", "mlp128", "numpy", "adam", "0.002", "constant", "60", "", "not run yet"]
    assert p2c[9:12] == ["", "", ""] and p2c[-1] == ""
    assert p2c[12:16] == ["0.01", "10000", "0.4%", "1.47%"]
    assert "Not run yet" in report.split("### P2:c", 1)[1]

    section = report.split("### P1:a", 1)[1].split("###", 1)[0]
    assert "trained in 41 s" in section and "runs/P1a-linear-tf/weights.npz" in section
    assert "| accuracy | 98.76% | 87.65% | 91.23% |" in section
    assert "| cross-entropy | 0.0111 | 0.0222 | 0.0333 |" in section
    assert "| **0** | **915** | 877 |" in section  # the confusion matrix, diagonal in bold
    assert "Test CPU (3 cores)" in report
    # The header names each time: run time summed over the runs, and this invocation's wall time.
    header = report.split("\n## ", 1)[0]
    assert "*Run time*, the 2 runs' training and evaluation summed over the runs" in header
    assert ": 50 s." in header and "*Wall time* of this invocation, which trained 1" in header
    assert ": 12 s." in header
    assert "| tensorflow | 9.9 |" in report and "| P2:b | 7.0 s | 8.0 s |" in report
    assert "{" not in report  # every placeholder of the template filled


def test_one_seed_report_reads_as_one_seed(tmp_path):
    """K = 1: single figures, no "±", the twins' difference without an interval, and why."""
    from twinnet.report import render_report

    presets = mini_presets(tmp_path)
    runs = {p.id: seed_runs(p, 1, [9100 + i * 7]) for i, p in enumerate(presets)}
    report = render_report(tmp_path, presets, runs, elapsed=12.0, trained=3, env=ENV)
    assert "±" not in report.replace("within ±0.1 pp", "")
    assert "trained with one seed" in report and "--seeds 5" in report
    assert "mean of" not in report and "median" not in report
    twins = report.split("## The twins compared", 1)[1]
    assert "| linear | P1:a − P2:b | 1 | -0.07 pp | n/a (one seed) | n/a | n/a |" in twins
    assert "With one seed (linear) a difference has no interval" in twins


def test_three_seed_report_shows_spread_interval_and_median_seed(tmp_path):
    from twinnet.report import render_report

    presets = mini_presets(tmp_path)
    by_label = {p.label: p for p in presets}
    # Test accuracies over seeds 0, 1, 2: TF 91.00, 91.30, 91.20%; NumPy 91.02, 91.30, 91.17%,
    # so the paired differences are -0.02, 0.00 and +0.03 pp.
    runs = {by_label["P1:a"].id: seed_runs(by_label["P1:a"], 3, [9100, 9130, 9120]),
            by_label["P2:b"].id: seed_runs(by_label["P2:b"], 3, [9102, 9130, 9117]),
            by_label["P2:c"].id: seed_runs(by_label["P2:c"], 3, [9800, 9700, 9750])}
    report = render_report(tmp_path, presets, runs, elapsed=12.0, trained=9, env=ENV, seeds=3)
    assert "trained with 3 seeds" in report

    p1a = table_rows(report)[0]
    assert p1a[7] == "3"
    # test error over seeds: 9.00, 8.70, 8.80% -> mean 8.83, sample std 0.15
    assert p1a[10] == "8.83 ± 0.15% (8.70–9.00%)"
    assert p1a[11] == "91.17 ± 0.15% (91.00–91.30%)"
    assert p1a[8] == "2.00 ± 1.00% (1.00–3.00%)"  # train error 1, 2, 3%
    assert p1a[-1] == "12 s"  # wall time (11, 12, 13 s), the mean per seed

    # The median-accuracy seed's figures and confusion matrix, and the report says so.
    section = report.split("### P1:a", 1)[1].split("###", 1)[0]
    assert "| 2 | 97.00% | 96.00% | 91.20% |" in section  # the per-seed table
    assert "those of seed 2, the run of median test accuracy" in section
    assert "seed 2; trained in 12 s" in section
    assert "runs/P1a-linear-tf/seed-2/weights.npz" in section
    assert "| **0** | **912** | 880 |" in section  # seed 2's matrix: 9120 correct
    section = report.split("### P2:c", 1)[1].split("##", 1)[0]
    assert "those of seed 2" in section and "runs/P2c-mlp128-numpy/seed-2/confusion.png" in section

    # Paired differences -0.02, 0, +0.03 pp: mean +0.003, std 0.0252, t(0.975, 2) = 4.303.
    twins = report.split("## The twins compared", 1)[1]
    assert "| linear | P1:a − P2:b | 3 | +0.003 pp | [-0.059, +0.066] pp | yes | yes |" in twins
    assert ("over 3 seeds the twins differ by +0.003 pp on average, 95% interval [-0.059, +0.066] pp: "
            "the interval contains 0 (no detectable difference), and it lies within ±0.1 pp") in twins
    assert "mlp128" not in twins  # only one twin of it
    assert "| P1:a (mean of 3 seeds) | 11.0 s | 12.0 s |" in report
    assert "{" not in report


def test_report_names_the_machine_the_runs_were_trained_on(tmp_path):
    """Re-rendered on another machine, the report still names the one its runs recorded."""
    from twinnet.report import render_report

    presets = mini_presets(tmp_path)
    runs = {p.id: seed_runs(p, 1, [9100]) for p in presets}
    for run in runs[presets[0].id] + runs[presets[1].id]:
        run["environment"] = {"cpu": "Recorded CPU", "cpu_count": 2, "tensorflow": "9.9"}
    report = render_report(tmp_path, presets[:2], runs, elapsed=1.0, trained=0, env=ENV)
    assert "from runs trained on Recorded CPU (2 cores)" in report and "Test CPU" not in report
    assert "| cpu | Recorded CPU |" in report and "| python | 3.x |" in report  # not recorded: this one's
    runs[presets[1].id][0]["environment"] = {"cpu": "Other CPU", "cpu_count": 2}
    report = render_report(tmp_path, presets[:2], runs, elapsed=1.0, trained=0, env=ENV)
    assert "from runs trained on Recorded CPU / Other CPU (2 cores)" in report


def test_twin_agreement_names_a_difference_outside_zero_and_the_band():
    from twinnet.report import twin_agreement

    cells, sentence = twin_agreement([(0, 0.20), (1, 0.25), (2, 0.30)])
    assert cells[3:] == ["no", "no"]
    assert "does not contain 0" in sentence and "does not lie within ±0.1 pp" in sentence
    cells, sentence = twin_agreement([(0, 0.05), (1, 0.06), (2, 0.07)])
    assert cells[3:] == ["no", "yes"]  # a detectable difference, but a small one


def test_t_quantiles():
    from twinnet.report import t_quantile_975

    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=1e-3)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-3)
    assert t_quantile_975(31) < t_quantile_975(30)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_report_gives_each_seed_verdict_with_its_figures(tmp_path):
    """The assignment-settings runs' metrics feed "The assignment report, rerun": each of the three
    verdicts appears with the figures that decide it."""
    from twinnet.presets import assignment_settings_presets
    from twinnet.report import render_report

    presets = load_presets()
    reruns = {p.reruns: p for p in assignment_settings_presets()}
    runs = {reruns["P1:a"].id: [fake_metrics(reruns["P1:a"].config, 0.95, 0.94, 9300, 50.0)],
            reruns["P1:b"].id: [fake_metrics(reruns["P1:b"].config, 0.97, 0.96, 9500, 40.0)],
            reruns["P2:b"].id: [fake_metrics(reruns["P2:b"].config, 0.92, 0.92, 9200, 5.0)]}
    report = render_report(tmp_path, presets, runs, elapsed=12.0, trained=3, env=ENV,
                           reruns=list(reruns.values()))
    section = report.split("## The assignment report, rerun", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| P")}
    assert rows["P1:a"].endswith("| 93.00% | reproduced (rerun 93.00% vs claim 92.9%: +0.10 pp) |")
    assert rows["P1:b"].endswith("| 95.00% | not reproduced (rerun 95.00% vs claim 97.11%: -2.11 pp) |")
    assert rows["P2:b"].endswith(
        "| 92.00% | claim contradicts its own matrix (claim 98.19% vs matrix 90.95%) |")
    assert "not run yet" in rows["P1:c"]
    assert "trained with one seed (seed 0), whatever `--seeds` says" in section
    assert "runs/A-P1a-linear-tf" in section
    # The main table has the assignment report's figures in every row it reports, n/a only
    # for P2:e and twinnet's own examples.
    for row in table_rows(report):
        assert ("n/a" in row) == (row[0] == "P2:e" or row[0].startswith("E")), row
    # The reruns are not rows of the main table, but their timings are listed.
    assert all("assignment settings" not in row[0] for row in table_rows(report))
    assert "| P1:a (assignment settings) | 50.0 s | 51.0 s |" in report


def curves(shift: float = 0.0, accuracy_top: float = 0.84) -> dict:
    """A run's curves over three evaluation points; ``shift`` moves the last accuracies."""
    return {"step": [10, 20, 30], "train_loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.6, 0.5],
            "train_accuracy": [0.7, 0.8, accuracy_top + 0.01 + shift],
            "val_accuracy": [0.72, 0.81, accuracy_top + shift]}


def test_twins_plot_draws_one_or_several_seeds(tmp_path):
    from twinnet.plots import plot_twins

    plot_twins({"P1:a tf": [curves(0)], "P2:b numpy": [curves(0.01)]}, "one", tmp_path / "one.png")
    plot_twins({"P1:a tf": [curves(0), curves(0.02)], "P2:b numpy": [curves(0.01), curves(0)]},
               "two", tmp_path / "two.png")
    assert (tmp_path / "one.png").stat().st_size > 1000 and (tmp_path / "two.png").stat().st_size > 1000


def test_report_redraws_the_run_pictures_it_shows(tmp_path):
    """A report that reuses runs redraws the pictures it links (the median seed's) from the
    metrics, so they follow the plotting code; the other seeds' are left alone."""
    from twinnet.report import redraw_shown_runs

    presets = mini_presets(tmp_path)[:1]
    correct = [9105, 9100, 9109]  # the median, 9105, is seed 0's
    runs = {presets[0].id: [fake_metrics(presets[0].with_seed(k, 3).config, 0.9, 0.9, correct[k], 1.0,
                                         curves=curves()) for k in range(3)]}
    redraw_shown_runs(tmp_path, presets, runs)
    drawn = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert drawn == ["runs/P1a-linear-tf/confusion.png", "runs/P1a-linear-tf/curves.png"]


def legend_titles(fig) -> list[str]:
    """The legend note of each axes (accuracy, cross-entropy); "" where there is none."""
    return [ax.get_legend().get_title().get_text() for ax in fig.axes]


def test_twins_plot_says_when_the_curves_coincide():
    from twinnet.plots import plot_twins

    same = plot_twins({"P1:a tf": [curves(), curves(0.01)], "P2:b numpy": [curves(), curves(0.01)]}, "same")
    assert legend_titles(same) == ["P1:a tf and P2:b numpy are identical:\nP1:a tf's lines lie under "
                                   "P2:b numpy's"] * 2
    # Within float32 rounding in the losses only: they coincide there, to within the difference.
    nearly = curves()
    nearly["val_loss"] = [v * (1 + 1e-8) for v in nearly["val_loss"]]
    accuracy_note, loss_note = legend_titles(plot_twins({"a": curves(), "b": nearly}, "nearly"))
    assert "a and b are identical" in accuracy_note and "a and b are within 1e-08 of each other" in loss_note
    # A difference a plot can show: no note on the accuracy, still one on the equal losses.
    apart = legend_titles(plot_twins({"a": curves(), "b": curves(0.001)}, "apart"))
    assert apart[0] == "" and "a and b are identical" in apart[1]
    assert legend_titles(plot_twins({"a": curves()}, "alone")) == ["", ""]


def test_accuracy_axes_fit_their_data():
    """The accuracy axis spans the plotted values plus a small margin: a run topping out at
    85% is not stretched to 100%."""
    from twinnet.plots import MARGIN, MIN_MARGIN, plot_curves, plot_twins

    run = curves(accuracy_top=0.84)
    low, high = plot_curves(run, "one run").axes[0].get_ylim()
    values = [v * 100 for v in run["train_accuracy"] + run["val_accuracy"]]
    margin = max((max(values) - min(values)) * MARGIN, MIN_MARGIN)
    assert (low, high) == pytest.approx((min(values) - margin, max(values) + margin))
    assert high < 90

    # The twins plot leaves out the first tenth of the points, which sit far below the rest.
    many = {"step": list(range(1, 21)), "train_loss": [1.0] * 20, "val_loss": [1.0] * 20,
            "train_accuracy": [0.10, 0.50] + [0.93] * 17 + [0.94], "val_accuracy": [0.2, 0.6] + [0.92] * 18}
    low, high = plot_twins({"a": many, "b": many}, "twins").axes[0].get_ylim()
    assert 91 < low < 92 and 94 < high < 95


def test_claims_print_at_their_stated_precision():
    """The assignment report printed one claim as "97.8500%": it reads "97.85%", at the
    report's two decimals, while a claim printed with fewer keeps its own."""
    from twinnet.assignment_report import format_claim

    assert format_claim(0.9785, 4) == "97.85%"
    assert format_claim(0.97856, 4) == "97.856%"
    assert format_claim(0.929, 1) == "92.9%"
    assert format_claim(0.971, 2) == "97.10%"
    assert format_claim(0.97, 0) == "97%"


# -- planning: which run folders, which seeds, without training ----------------------------------


def write_finished(directory, config) -> None:
    """A finished run folder as far as planning can tell: a whole metrics.json with ``config``
    and the SHA-256 of its weights file."""
    from twinnet.runs import CURVE_KEYS, file_sha256

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights.npz").write_bytes(b"stand-in weights")
    metrics = fake_metrics(config, 0.9, 0.9, 9000, 1.0, curves={key: [1] for key in CURVE_KEYS})
    metrics["weights_sha256"] = file_sha256(directory / "weights.npz")
    (directory / "metrics.json").write_text(json.dumps(metrics))


def test_plan_trains_k_seeds_of_each_preset_and_one_of_each_rerun(tmp_path):
    from twinnet.presets import assignment_settings_presets
    from twinnet.report import cost, finished_runs, plan_runs

    presets = mini_presets(tmp_path)
    reruns = assignment_settings_presets()
    out = tmp_path / "report"
    reused, jobs = plan_runs(presets + reruns, out, [], None, workers=2, seeds=3)
    assert reused == {}
    planned = {(os.path.relpath(job.directory, out), job.preset.config.seed) for job in jobs}
    expected = {(f"runs/{folder}{sub}", seed) for folder in ("P1a-linear-tf", "P2b-linear-numpy",
                                                             "P2c-mlp128-numpy")
                for sub, seed in (("", 0), ("/seed-1", 1), ("/seed-2", 2))}
    expected |= {(f"runs/{p.id}-{p.config.model}-{p.config.backend}", 0) for p in reruns}
    assert planned == expected and len(jobs) == len(expected)
    seed1 = next(job for job in jobs if job.directory.endswith("P1a-linear-tf/seed-1"))
    assert (seed1.preset.label, seed1.preset.id) == ("P1:a seed 1", "P1a-seed1")
    assert seed1.preset.config == TrainConfig(**{**vars(presets[0].config), "seed": 1})
    costs = [cost(job.preset.config) for job in jobs]
    assert costs == sorted(costs, reverse=True)  # longest first

    # Finished seed runs are reused; a one-assignment report's folder is seed 0 of a three-seed one.
    write_finished(presets[0].run_dir(out), presets[0].config)
    write_finished(presets[0].run_dir(out, 2), presets[0].with_seed(2, 3).config)
    write_finished(reruns[0].run_dir(out), reruns[0].config)
    reused, jobs = plan_runs(presets + reruns, out, [], None, workers=2, seeds=3)
    assert set(reused) == {("P1a", 0), ("P1a", 2), ("A-P1a", 0)}
    assert len(jobs) == len(expected) - 3
    assert [run["config"]["seed"] for run in finished_runs(presets, out, 3)["P1a"]] == [0, 2]
    reused, jobs = plan_runs(presets, out, [], None, workers=1, seeds=1)
    assert set(reused) == {("P1a", 0)} and {job.preset.label for job in jobs} == {"P2:b", "P2:c"}


def test_only_selects_across_both_sets(tmp_path):
    from twinnet.presets import assignment_settings_presets, select
    from twinnet.report import plan_runs

    presets = load_presets()
    everything = presets + assignment_settings_presets()
    assert {p.id for p in select(everything, "linear")} == {"P1a", "P2b", "A-P1a", "A-P2b"}
    assert {p.id for p in select(everything, "A-P1d,P2:e,P2:c (assignment settings)")} == {
        "A-P1d", "P2e", "A-P2c"}
    out = tmp_path / "report"
    write_finished(everything[0].run_dir(out), everything[0].config)  # P1:a, finished
    retrain = select(everything, "P1:a,A-P2b")
    reused, jobs = plan_runs(everything, out, retrain, None, workers=1, seeds=2)
    assert reused == {}  # --only retrains what it names, finished or not
    assert sorted(os.path.relpath(job.directory, out) for job in jobs) == [
        "runs/A-P2b-linear-numpy", "runs/P1a-linear-tf", "runs/P1a-linear-tf/seed-1"]
    with pytest.raises(TwinnetError, match="unknown run.*A-P1a"):
        select(everything, "P9:z")


def test_bad_seed_counts_are_refused(tmp_path, capsys):
    from twinnet.cli import main
    from twinnet.config import MAX_SEED

    assert main(["report", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "twinnet: error: --seeds must be at least 1, got 0" in capsys.readouterr().err
    path = tmp_path / "p.toml"
    path.write_text(MINI_PRESETS.replace("seed = 0", f"seed = {MAX_SEED - 1}", 1))
    with pytest.raises(TwinnetError, match=r"--seeds 3: run P1:a: seed must be between"):
        generate_report(out=tmp_path, presets_path=path, seeds=3)


def test_presets_errors_name_the_file_and_run(tmp_path):
    from twinnet.errors import TwinnetError

    path = tmp_path / "p.toml"
    path.write_text(MINI_PRESETS.replace("lr = 0.5", "lr = -1"))
    with pytest.raises(TwinnetError, match=r"p.toml: run P1a: lr must be a positive number, got -1"):
        load_presets(path)
    path.write_text(MINI_PRESETS.replace("twins = {numpy", "twins = {jax"))
    with pytest.raises(TwinnetError, match=r"twins: unknown key\(s\) jax"):
        load_presets(path)
    path.write_text(MINI_PRESETS + '[assignment_report."P2:b"]\nlr = 0.5\n')  # now in assignment_report.toml
    with pytest.raises(TwinnetError, match=r"p.toml: unknown key\(s\) assignment_report"):
        load_presets(path)


def test_cli_defaults_are_the_config_defaults_and_errors_name_the_flag(capsys):
    from twinnet.cli import build_parser, main
    from twinnet.commands.arguments import config_from_args
    from twinnet.config import DEFAULT_LR, TrainConfig

    args = build_parser().parse_args(["train", "mlp128"])
    assert config_from_args(args) == TrainConfig(model="mlp128")
    args = build_parser().parse_args(["train", "mlp128", "--optimizer", "adam"])
    assert config_from_args(args).lr == DEFAULT_LR["adam"]
    assert main(["train", "linear", "--lr", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "twinnet: error: --lr must be a positive number, got -1.0"
    assert main(["train", "linear", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
