"""The twins agree: same weights and batch give the same logits and gradients, the same
optimizer steps give the same parameters, and weights trained by one twin score the same
test accuracy in the other.

Relative error of a gradient tensor: max|numpy - tf| / max|tf|, per parameter.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import twinnet  # noqa: E402
from twinnet.metrics import evaluate  # noqa: E402
from twinnet.models import MODEL_NAMES, init_params  # noqa: E402
from twinnet.runs import weights_meta  # noqa: E402
from twinnet.training import TrainConfig, train  # noqa: E402
from twinnet.weights import save_weights  # noqa: E402


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """One weights file per model: Glorot weights and non-zero biases, so no unit sits
    exactly at a ReLU kink."""
    folder = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(7)
    paths = {}
    for model in MODEL_NAMES:
        params = init_params(model, seed=11)
        for key in params:
            if key.endswith("/b"):
                params[key] = rng.normal(0, 0.05, params[key].shape).astype(np.float32)
        paths[model] = folder / f"{model}.npz"
        save_weights(paths[model], model, params, {"backend": "test"})
    return paths


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-12))


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_logits_and_gradients_agree(model, weights_files, mnist):
    x, y = mnist.train.x[:64], mnist.train.y[:64]
    tf_model = twinnet.load_model(model, "tf", weights=str(weights_files[model]))
    np_model = twinnet.load_model(model, "numpy", weights=str(weights_files[model]))
    tf_logits, np_logits = tf_model.logits(x), np_model.logits(x)
    assert np_logits.dtype == np.float32
    assert np.max(np.abs(np_logits - tf_logits)) <= 1e-4
    tf_loss, tf_grads = tf_model.loss_and_grads(x, y)
    np_loss, np_grads = np_model.loss_and_grads(x, y)
    assert np_loss == pytest.approx(tf_loss, rel=1e-5)
    assert list(np_grads) == list(tf_grads)
    for key in tf_grads:
        assert np_grads[key].dtype == np.float32 and np_grads[key].shape == tf_grads[key].shape
        assert relative_error(np_grads[key], tf_grads[key]) <= 1e-3, key


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("model", ["mlp128", "cnn"])
def test_optimizer_steps_agree(model, optimizer, weights_files, mnist):
    """Ten updates on the same batches leave both twins with the same parameters: one
    learning rate means the same thing in both."""
    lr = 0.05 if optimizer == "sgd" else 0.001
    twins = [twinnet.load_model(model, b, weights=str(weights_files[model]), optimizer=optimizer)
             for b in ("tf", "numpy")]
    for step in range(10):
        batch = slice(step * 50, step * 50 + 50)
        losses = [t.train_step(mnist.train.x[batch], mnist.train.y[batch], lr)[0] for t in twins]
        assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    tf_params, np_params = twins[0].params, twins[1].params
    for key in tf_params:
        moved = np.max(np.abs(tf_params[key] - init_params(model, seed=11)[key]))
        assert np.max(np.abs(np_params[key] - tf_params[key])) <= 1e-3 * max(moved, 1e-3), key
    tf_state, np_state = twins[0].optimizer_state_dict(), twins[1].optimizer_state_dict()
    assert int(tf_state["iterations"]) == int(np_state["iterations"]) == 10
    assert sorted(tf_state) == sorted(np_state)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("trainer", ["tf", "numpy"])
def test_weights_trained_by_one_twin_score_the_same_in_the_other(model, trainer, mnist, tmp_path):
    config = TrainConfig(model=model, backend=trainer, optimizer="adam", lr=0.002, steps=150)
    trained, _ = train(config, mnist, progress=False, final_splits=())
    path = tmp_path / "w.npz"
    save_weights(path, model, trained.params, weights_meta(config))
    scores = {b: evaluate(twinnet.load_model(model, b, weights=str(path)), mnist.test.x, mnist.test.y)
              for b in ("tf", "numpy")}
    assert scores["tf"]["accuracy"] > 0.85
    assert abs(scores["tf"]["accuracy"] - scores["numpy"]["accuracy"]) <= 0.0001
