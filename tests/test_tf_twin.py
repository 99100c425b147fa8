"""The TensorFlow twin: canonical parameters, autodiff against finite differences,
training smoke runs on real MNIST, and the train/evaluate commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import twinnet  # noqa: E402
from twinnet.cli import main  # noqa: E402
from twinnet.data import Mnist  # noqa: E402
from twinnet.metrics import cross_entropy  # noqa: E402
from twinnet.models import MODEL_NAMES, init_params, param_shapes  # noqa: E402
from twinnet.training import TrainConfig, train  # noqa: E402


def tiny_batch(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_parameters_are_canonical_and_round_trip(model):
    params = init_params(model, seed=5)
    tf_model = twinnet.load_model(model, "tf", seed=5)
    got = tf_model.params
    assert list(got) == list(param_shapes(model))
    for key in params:
        np.testing.assert_array_equal(got[key], params[key])


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_loss_and_grads_match_finite_differences(model):
    """Central differences in float64 on a tiny batch, at 10 random entries per parameter."""
    from twinnet.tf_nn import TFModel

    x, y = tiny_batch()
    rng = np.random.default_rng(2)
    params = {k: v.astype(np.float64) for k, v in init_params(model, seed=1).items()}
    for key in params:  # non-zero biases keep ReLU units off their kink
        if key.endswith("/b"):
            params[key] = rng.normal(0, 0.1, params[key].shape)
    tf_model = TFModel(model, params, dtype="float64")
    assert tf_model.logits(x.astype(np.float64)).dtype == np.float64
    loss, grads = tf_model.loss_and_grads(x.astype(np.float64), y)
    assert loss == pytest.approx(cross_entropy(tf_model.logits(x.astype(np.float64)), y), rel=1e-12)
    eps = 1e-6
    for key, value in params.items():
        assert grads[key].shape == value.shape
        for flat in rng.choice(value.size, size=min(10, value.size), replace=False):
            index = np.unravel_index(flat, value.shape)
            losses = []
            for sign in (1, -1):
                moved = {k: v.copy() for k, v in params.items()}
                moved[key][index] += sign * eps
                tf_model.set_params(moved)
                losses.append(cross_entropy(tf_model.logits(x.astype(np.float64)), y))
            numeric = (losses[0] - losses[1]) / (2 * eps)
            assert grads[key][index] == pytest.approx(numeric, rel=1e-5, abs=1e-9), (key, index)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "optimizer", "lr", "floor"),
                         [("cnn", "adam", 0.001, 0.90), ("linear", "sgd", 0.5, 0.85)])
def test_300_steps_on_real_mnist(mnist: Mnist, model, optimizer, lr, floor):
    config = TrainConfig(model=model, backend="tf", optimizer=optimizer, lr=lr, steps=300)
    _, metrics = train(config, mnist, progress=False)
    assert metrics["final"]["validation"]["accuracy"] >= floor
    curves = metrics["curves"]
    assert curves["step"][-1] == 300 and len(curves["step"]) == 50
    assert curves["val_loss"][-1] < curves["val_loss"][0]
    assert np.trace(metrics["confusion_matrix"]) == metrics["final"]["test"]["correct"]


@pytest.mark.slow
def test_train_then_evaluate_agree(tmp_path, mnist_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "mlp128", "--backend", "tf", "--steps", "60", "--lr", "0.2", "--data-dir",
                 str(mnist_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.png", "curves.png", "metrics.json", "weights.npz"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["steps"] == 60 and metrics["environment"]["tensorflow"]
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(out / "weights.npz"), "--backend", "tf", "--json",
                 "--data-dir", str(mnist_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == metrics["final"]["test"]["accuracy"]
    assert result["confusion_matrix"] == metrics["confusion_matrix"]


def test_bad_values_are_one_line_errors(capsys):
    assert main(["train", "linear", "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "twinnet: error: --steps must be at least 1, got 0"
