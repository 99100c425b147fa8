"""Sweeps that survive interruption, with several seeds per rate; the Ray extra's absence."""

from __future__ import annotations

import json
import sys

import pytest

import twinnet.sweep
from twinnet.cli import main
from twinnet.environment import install_command
from twinnet.sweep import run_sweep, sweep_stem
from twinnet.training import TrainConfig


@pytest.mark.slow
def test_finished_points_survive_an_interrupted_sweep(tmp_path, mnist_path, monkeypatch):
    base = TrainConfig(model="linear", backend="numpy", optimizer="sgd", lr=0.1, steps=30, seed=3)
    trained = []
    real_point = twinnet.sweep.sweep_point

    def interrupted_after_two(job):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(job.config)
        return real_point(job)

    monkeypatch.setattr(twinnet.sweep, "sweep_point", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, [0.05, 0.5], workers=1, data_dir=mnist_path, seeds=2, out_dir=tmp_path)
    points_dir = sweep_stem(base, tmp_path).with_suffix(".points")
    assert sorted(p.name for p in points_dir.iterdir()) == ["lr0.05-seed3.json", "lr0.05-seed4.json"]

    trained.clear()
    monkeypatch.setattr(twinnet.sweep, "sweep_point", lambda job: trained.append(job.config)
                        or real_point(job))
    result = run_sweep(base, [0.05, 0.5], workers=1, data_dir=mnist_path, seeds=2, out_dir=tmp_path)
    assert [(c.lr, c.seed) for c in trained] == [(0.5, 3), (0.5, 4)]  # only what was missing
    assert [p["lr"] for p in result["points"]] == [0.05, 0.5]
    for point in result["points"]:
        accuracies = [s["val_accuracy"] for s in point["seeds"]]
        assert [s["seed"] for s in point["seeds"]] == [3, 4]
        assert point["val_accuracy"] == pytest.approx(sum(accuracies) / 2)
        assert point["val_accuracy_std"] > 0  # two seeds, two different runs
    assert result["chosen_lr"] == max(result["points"], key=lambda p: p["val_accuracy"])["lr"]

    # A changed setting is another point: nothing is reused.
    trained.clear()
    run_sweep(TrainConfig(**{**vars(base), "steps": 31}), [0.05], workers=1, data_dir=mnist_path,
              out_dir=tmp_path)
    assert [(c.lr, c.seed, c.steps) for c in trained] == [(0.05, 3, 31)]


def test_ray_engine_without_ray_names_the_extra(tmp_path, mnist_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    code = main(["sweep", "linear", "--backend", "numpy", "--steps", "5", "--lrs", "0.1",
                 "--engine", "ray", "--data-dir", str(mnist_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"twinnet: error: --engine ray needs Ray: {install_command('ray')}\n"


@pytest.mark.slow
def test_sweep_command_writes_mean_and_spread(tmp_path, mnist_path, capsys):
    code = main(["sweep", "linear", "--backend", "numpy", "--steps", "20", "--lrs", "0.1", "0.5",
                 "--seeds", "2", "--workers", "1", "--data-dir", str(mnist_path),
                 "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 seed(s)" in out and "<- chosen" in out
    result = json.loads((tmp_path / "linear-numpy-sgd.json").read_text())
    assert result["seeds"] == 2 and all(len(p["seeds"]) == 2 for p in result["points"])
