"""Divergence, checkpoints, kill-and-resume, Ctrl-C, and hostile weights files at the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from twinnet.checkpoint import CHECKPOINT_NAME, read_checkpoint
from twinnet.cli import main
from twinnet.models import init_params
from twinnet.training import DivergenceError, TrainConfig, train
from twinnet.weights import save_weights

TWINNET = [sys.executable, "-m", "twinnet"]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TWINNET, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_divergence_stops_at_once_with_one_line(tmp_path, mnist_path):
    out = tmp_path / "run"
    result = run_cli("train", "mlp128", "--backend", "numpy", "--lr", "1000", "--steps", "500",
                     "--data-dir", str(mnist_path), "--out", str(out))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "diverged at step" in lines[0] and "learning rate 1000" in lines[0]
    assert "backend numpy" in lines[0]
    step = int(lines[0].split("step ")[1].split(":")[0])
    assert step <= 10
    assert not (out / "weights.npz").exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, mnist):
    checkpoint = tmp_path / CHECKPOINT_NAME
    config = TrainConfig(model="linear", backend="numpy", lr=0.1, steps=40)
    train(config, mnist, progress=False, checkpoint=checkpoint, checkpoint_every=10)
    before = checkpoint.read_bytes()
    # Resume the saved state with a rate that blows up: the checkpoint must survive as it was.
    assert read_checkpoint(checkpoint)["step"] == 30
    huge = TrainConfig(model="linear", backend="numpy", lr=1e30, steps=40)
    with pytest.raises(DivergenceError):
        train(huge, mnist, progress=False, checkpoint=checkpoint, checkpoint_every=10, resume=True)
    assert checkpoint.read_bytes() == before


def wait_for_checkpoint(path: Path, process: subprocess.Popen, min_step: int) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.stderr.read()}")
        if path.exists():
            try:
                step = read_checkpoint(path)["step"]
            except Exception:  # noqa: BLE001 - the rename is atomic, but be patient anyway
                step = 0
            if step >= min_step:
                return step
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


@pytest.mark.slow
def test_numpy_run_killed_and_resumed_is_bit_identical(tmp_path, mnist_path):
    args = ["mlp128", "--backend", "numpy", "--optimizer", "adam", "--lr", "0.002",
            "--schedule", "cosine", "--steps", "1200", "--eval-every", "100",
            "--data-dir", str(mnist_path)]
    whole = tmp_path / "whole"
    assert run_cli("train", *args, "--out", str(whole)).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen([*TWINNET, "train", *args, "--out", str(killed),
                                "--checkpoint-every", "50"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    step = wait_for_checkpoint(killed / CHECKPOINT_NAME, process, min_step=150)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "weights.npz").exists()
    assert step < 1200
    resumed = run_cli("train", "--resume", str(killed), "--data-dir", str(mnist_path))
    assert resumed.returncode == 0, resumed.stderr

    with np.load(whole / "weights.npz") as a, np.load(killed / "weights.npz") as b:
        for key in a.files:
            if key != "meta":
                assert np.array_equal(a[key], b[key]), key
    curves_a = json.loads((whole / "metrics.json").read_text())["curves"]
    curves_b = json.loads((killed / "metrics.json").read_text())["curves"]
    assert curves_a == curves_b


@pytest.mark.slow
def test_tf_run_resumes_to_the_same_step_and_keeps_learning(tmp_path, mnist):
    checkpoint = tmp_path / CHECKPOINT_NAME
    short = TrainConfig(model="mlp128", backend="tf", optimizer="adam", lr=0.001, steps=300)
    train(short, mnist, progress=False, checkpoint=checkpoint, checkpoint_every=100)
    state = read_checkpoint(checkpoint)
    assert state["step"] == 200 and int(state["optimizer"]["iterations"]) == 200
    model, metrics = train(short, mnist, progress=False, checkpoint=checkpoint, resume=True)
    assert metrics["resumed_at_step"] == 200
    assert metrics["curves"]["step"][-1] == 300 and len(metrics["curves"]["step"]) == 50
    assert int(model.optimizer_state_dict()["iterations"]) == 300
    assert metrics["final"]["validation"]["accuracy"] > 0.93


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, mnist_path):
    out = tmp_path / "run"
    process = subprocess.Popen([*TWINNET, "train", "mlp256x2", "--backend", "numpy",
                                "--steps", "100000", "--checkpoint-every", "20",
                                "--data-dir", str(mnist_path), "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(out / CHECKPOINT_NAME, process, min_step=20)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "checkpoint saved" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] >= 20


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["wrong model", "missing key", "extra key", "wrong shape",
                                  "wrong dtype", "nan", "pickled", "not an npz"])
def test_hostile_weights_files_at_the_cli(tmp_path, mnist_path, case):
    path = tmp_path / "w.npz"
    params = init_params("mlp128")
    meta = {"model": "mlp128"}
    if case == "wrong model":
        meta = {"model": "linear"}
    elif case == "missing key":
        del params["dense2/W"]
    elif case == "extra key":
        params["dense3/W"] = np.zeros(3, np.float32)
    elif case == "wrong shape":
        params["dense2/W"] = np.zeros((10, 128), np.float32)
    elif case == "wrong dtype":
        params["dense2/W"] = params["dense2/W"].astype(np.float16)
    elif case == "nan":
        params["dense2/W"][0, 0] = np.inf
    elif case == "pickled":
        params["dense2/W"] = np.array([{"x": 1}], dtype=object)
    if case == "not an npz":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    else:
        with open(path, "wb") as fh:
            np.savez(fh, **params, meta=np.array(json.dumps(meta)))
    result = run_cli("evaluate", "--weights", str(path), "--backend", "numpy", "--data-dir", str(mnist_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.stderr, lines


def test_a_valid_file_still_evaluates(tmp_path, mnist_path):
    path = tmp_path / "w.npz"
    save_weights(path, "mlp128", init_params("mlp128"), {"backend": "numpy"})
    result = run_cli("evaluate", "--weights", str(path), "--data-dir", str(mnist_path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 10_000
