"""One name per model: a spec file's ``name`` is what every output calls the model (logs,
progress bars, plot titles, run folders, report rows, weights meta), never the file's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twinnet.cli import main

NAME, FILE = "stridenet", "my.toml"
# A small conv model, fast on either twin; its file name and its `name` differ.
SPEC = f"""name = "{NAME}"
[[layers]]
type = "conv2d"
filters = 4
stride = 2
[[layers]]
type = "relu"
[[layers]]
type = "flatten"
[[layers]]
type = "dense"
units = 10
"""
PRESETS = f"""
[models."{FILE}"]
optimizer = "sgd"
lr = 0.1
schedule = "constant"
steps = 5
batch_size = 50
seed = 0
lr_chosen_by = "a test"
twins = {{numpy = "X:a"}}
"""


@pytest.fixture
def spec(tmp_path, monkeypatch) -> Path:
    """my.toml, naming the model stridenet, in the working folder (as a user writes it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / FILE).write_text(SPEC)
    return tmp_path


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    """The titles of every run picture drawn (curves and confusion matrix)."""
    import twinnet.plots as plots

    seen: list[str] = []
    for function in ("plot_curves", "plot_confusion"):
        original = getattr(plots, function)

        def record(data, title, *args, _original=original, **kwargs):  # noqa: ANN001, ANN202
            seen.append(title)
            return _original(data, title, *args, **kwargs)

        monkeypatch.setattr(plots, function, record)
    return seen


def said(capsys) -> str:
    out, err = capsys.readouterr()
    return out + err


def assert_named(text: str) -> None:
    assert NAME in text, text
    assert FILE not in text, text


def test_train_names_the_model_by_its_spec_name(spec, mnist_path, capsys, titles):
    from twinnet.weights import load_weights

    code = main(["train", FILE, "--backend", "numpy", "--steps", "5", "--data-dir", str(mnist_path),
                 "--tensorboard", "tb"])
    assert code == 0
    assert_named(said(capsys))
    run = spec / "runs" / f"{NAME}-numpy"
    assert sorted(p.name for p in (spec / "runs").iterdir()) == [f"{NAME}-numpy"]
    assert titles and all(NAME in t and FILE not in t for t in titles), titles
    assert load_weights(run / "weights.npz")[1]["model"] == NAME
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_name"] == NAME
    assert [p.name for p in (spec / "tb").iterdir()] == [NAME]


def test_progress_bar_names_the_model(spec, mnist, capsys):
    from twinnet.config import TrainConfig
    from twinnet.training import train

    train(TrainConfig(model=FILE, backend="numpy", steps=3, batch_size=20), mnist, progress=True)
    assert_named(capsys.readouterr().err)


def test_gradcheck_names_the_model(spec, capsys):
    assert main(["gradcheck", FILE]) == 0
    assert_named(said(capsys))


def test_sweep_and_bench_name_the_model(spec, mnist_path, capsys):
    assert main(["sweep", FILE, "--backend", "numpy", "--steps", "3", "--lrs", "0.1",
                 "--data-dir", str(mnist_path), "--out", "sweeps"]) == 0
    assert_named(said(capsys))
    assert sorted(p.name for p in (spec / "sweeps").iterdir() if p.is_file()) == [
        f"{NAME}-numpy-sgd.json", f"{NAME}-numpy-sgd.png"]
    assert main(["bench", "--models", FILE, "--backends", "numpy", "--repeats", "1", "--steps", "1"]) == 0
    assert_named(said(capsys))


def test_report_names_the_model(spec, mnist_path, capsys, titles):
    (spec / "presets.toml").write_text(PRESETS)
    assert main(["report", "--presets", "presets.toml", "--out", "out", "--jobs", "1",
                 "--data-dir", str(mnist_path)]) == 0
    assert_named(said(capsys))
    assert [p.name for p in (spec / "out" / "runs").iterdir()] == [f"Xa-{NAME}-numpy"]
    assert titles and all(NAME in t and FILE not in t for t in titles), titles
    report = (spec / "out" / "REPORT.md").read_text()
    assert f"| {NAME} |" in report and f"## {NAME}" in report
    assert FILE not in report.replace(f'[models."{FILE}"]', "")
    assert main(["report", "--presets", "presets.toml", "--out", "out", "--jobs", "1", "--only", NAME,
                 "--data-dir", str(mnist_path)]) == 0  # the model's name selects its runs
    assert f"[1/1] X:a {NAME} (numpy)" in said(capsys)


@pytest.mark.tf
def test_compare_and_trace_name_the_model(spec, mnist_path, capsys):
    assert main(["compare", FILE, "--batch", "4", "--data-dir", str(mnist_path)]) == 0
    assert_named(said(capsys))
    assert main(["train", FILE, "--backend", "numpy", "--steps", "3", "--data-dir", str(mnist_path)]) == 0
    capsys.readouterr()
    weights = str(spec / "runs" / f"{NAME}-numpy" / "weights.npz")
    assert main(["trace", "--weights", weights, "--index", "0", "--out", "trace",
                 "--data-dir", str(mnist_path)]) == 0
    assert FILE not in said(capsys)
    trace = (spec / "trace" / "trace.md").read_text()
    assert_named(trace)
    assert json.loads((spec / "trace" / "trace.json").read_text())["model"] == NAME
