"""Tests of the NumPy twin: gradient checks, reference forwards, optimizers, dtypes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twinnet import gradcheck
from twinnet.models import MODEL_NAMES, init_params, param_shapes
from twinnet.numpy_nn import (
    SGD,
    Adam,
    Conv2D,
    ConvReLUPool,
    Dense,
    MaxPool2D,
    NumpyModel,
    ReLU,
    softmax_cross_entropy,
)
from twinnet.numpy_nn.layers import add_bias, im2col_3x3, relu, window_major_to_nhwc
from twinnet.numpy_nn.network import MAX_EVAL_CHUNK, image_chunk

SRC = Path(__file__).resolve().parents[1] / "src"


def _batch(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, size=n)


# -- gradient checks ---------------------------------------------------------------


def test_every_layer_passes_gradcheck() -> None:
    rows = gradcheck.check_layers(seed=0)
    targets = {r.target for r in rows}
    assert targets == {
        "layer:Dense", "layer:ReLU", "layer:Conv2D", "layer:MaxPool2D", "layer:Flatten",
        "layer:Conv2D(window-major)", "layer:MaxPool2D(window-major)",
        "layer:SoftmaxCrossEntropy",
    }
    for r in rows:
        assert r.passed and r.max_rel_error <= 1e-6, gradcheck.format_table(rows)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_passes_gradcheck(name: str) -> None:
    rows = gradcheck.check_model(name, seed=0)
    assert [r.parameter for r in rows] == list(param_shapes(name))
    for r in rows:
        assert r.passed and r.max_rel_error <= 1e-6, gradcheck.format_table(rows)


def test_gradcheck_catches_a_wrong_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_backward(self: Dense, dout: np.ndarray) -> np.ndarray:
        self.grads = {"W": 1.01 * (self.cache_x.T @ dout), "b": dout.sum(axis=0)}
        return dout @ self.W.T

    monkeypatch.setattr(Dense, "backward", wrong_backward)
    rows = gradcheck.check_model("mlp128", seed=0)
    failed = {r.parameter for r in rows if not r.passed}
    assert {"dense1/W", "dense2/W"} <= failed


def test_format_table_has_pass_fail_column() -> None:
    rows = [
        gradcheck.GradcheckRow("cnn", "conv1/W", 1.5e-9, True),
        gradcheck.GradcheckRow("layer:Conv2D", "x", 2e-3, False),
    ]
    lines = gradcheck.format_table(rows).splitlines()
    assert lines[0].split() == ["target", "parameter", "max", "rel", "error", "result"]
    assert lines[2].split() == ["cnn", "conv1/W", "1.50e-09", "PASS"]
    assert lines[3].split() == ["layer:Conv2D", "x", "2.00e-03", "FAIL"]
    # Aligned: the result column starts at the same offset on every line.
    assert lines[0].index("result") == lines[2].index("PASS") == lines[3].index("FAIL")


# -- softmax cross-entropy -----------------------------------------------------------


def test_softmax_cross_entropy_matches_naive_formula() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 10))
    y = rng.integers(0, 10, size=6)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    naive_loss = -np.mean(np.log(p[np.arange(6), y]))
    naive_grad = (p - np.eye(10)[y]) / 6
    loss, grad = softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(naive_loss, rel=1e-12)
    np.testing.assert_allclose(grad, naive_grad, rtol=1e-12, atol=1e-15)


def test_softmax_cross_entropy_stable_for_huge_logits() -> None:
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0]], dtype=np.float32)
    y = np.array([1, 0])
    loss, grad = softmax_cross_entropy(logits, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # Row 0: log p(y=1) = -1e4; row 1: two equal maxima, log p(y=0) = -log 2.
    assert loss == pytest.approx((1e4 + np.log(2)) / 2, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [-0.25, 0.25, 0.0]], atol=1e-7)
    assert grad.dtype == np.float32


# -- layer forwards against references ------------------------------------------------


def _conv_reference(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Slow, obvious 'same' cross-correlation with explicit loops (tests only)."""
    n, h, w, c_in = x.shape
    c_out = W.shape[3]
    out = np.zeros((n, h, w, c_out))
    for i_n in range(n):
        for i in range(h):
            for j in range(w):
                for o in range(c_out):
                    total = b[o]
                    for p in range(3):
                        for q in range(3):
                            ii, jj = i + p - 1, j + q - 1
                            if 0 <= ii < h and 0 <= jj < w:
                                for c in range(c_in):
                                    total += x[i_n, ii, jj, c] * W[p, q, c, o]
                    out[i_n, i, j, o] = total
    return out


@pytest.mark.parametrize("c_in", [1, 3])
def test_conv2d_forward_matches_loop_reference(c_in: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, c_in))
    W = rng.standard_normal((3, 3, c_in, 2))
    b = rng.standard_normal(2)
    conv = Conv2D(W, b)
    np.testing.assert_allclose(conv.forward(x), _conv_reference(x, W, b), rtol=1e-12, atol=1e-12)
    # The padded buffer is reused: a second input must not see the first one's data.
    x2 = rng.standard_normal(x.shape)
    np.testing.assert_allclose(conv.forward(x2), _conv_reference(x2, W, b), rtol=1e-12, atol=1e-12)


def test_conv2d_skips_input_gradient_when_not_needed() -> None:
    rng = np.random.default_rng(3)
    conv = Conv2D(rng.standard_normal((3, 3, 1, 2)), np.zeros(2), needs_input_grad=False)
    out = conv.forward(rng.standard_normal((2, 4, 4, 1)))
    assert conv.backward(np.ones_like(out)) is None
    assert conv.grads["W"].shape == (3, 3, 1, 2) and conv.grads["b"].shape == (2,)


def test_maxpool_forward_backward_hand_example() -> None:
    # One image, 4x4, one channel; the windows are the four 2x2 quadrants.
    x = np.array(
        [
            [1.0, 2.0, 5.0, 0.0],
            [3.0, 0.0, 1.0, 1.0],
            [7.0, 7.0, -1.0, -2.0],
            [7.0, 0.0, -3.0, -4.0],
        ]
    ).reshape(1, 4, 4, 1)
    pool = MaxPool2D()
    out = pool.forward(x)
    np.testing.assert_array_equal(out[0, :, :, 0], [[3.0, 5.0], [7.0, -1.0]])
    dout = np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 2, 2, 1)
    dx = pool.backward(dout)
    # Bottom-left window has a three-way tie at 7: all of its gradient goes to the
    # first maximum in row-major order, (2, 0).
    expected = np.array(
        [
            [0.0, 0.0, 20.0, 0.0],
            [10.0, 0.0, 0.0, 0.0],
            [30.0, 0.0, 40.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_maxpool_routes_ties_to_exactly_one_element() -> None:
    x = np.zeros((3, 4, 6, 2), dtype=np.float32)  # every window is a four-way tie
    pool = MaxPool2D()
    pool.forward(x)
    dout = np.random.default_rng(4).standard_normal((3, 2, 3, 2)).astype(np.float32)
    dx = pool.backward(dout)
    np.testing.assert_allclose(dx.reshape(3, 2, 2, 3, 2, 2).sum(axis=(2, 4)), dout, rtol=1e-6)
    assert np.count_nonzero(dx) == dout.size


# -- optimizers ------------------------------------------------------------------------


def test_adam_matches_hand_computed_two_steps() -> None:
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-7
    w = np.array([1.0, -2.0], dtype=np.float64)
    g1, g2 = np.array([0.5, -1.0]), np.array([0.25, 3.0])
    # By hand (Keras 3 formulas), step 1 then step 2.
    m1, v1 = 0.1 * g1, 0.001 * g1**2
    w1 = w - (lr * np.sqrt(1 - b2) / (1 - b1)) * m1 / (np.sqrt(v1) + eps)
    m2 = m1 + (g2 - m1) * 0.1
    v2 = v1 + (g2**2 - v1) * 0.001
    w2 = w1 - (lr * np.sqrt(1 - b2**2) / (1 - b1**2)) * m2 / (np.sqrt(v2) + eps)
    # Step 1 moves each weight by about lr against the sign of its gradient.
    np.testing.assert_allclose(w1, [0.9, -1.9], rtol=1e-5)

    adam = Adam()
    params = {"p": w.copy()}
    adam.step(params, {"p": g1}, lr)
    np.testing.assert_allclose(params["p"], w1, rtol=1e-14)
    adam.step(params, {"p": g2}, lr)
    np.testing.assert_allclose(params["p"], w2, rtol=1e-14)

    state = adam.state_dict()
    assert set(state) == {"p/m", "p/v", "iterations"}
    assert int(state["iterations"]) == 2
    np.testing.assert_allclose(state["p/m"], m2, rtol=1e-14)
    np.testing.assert_allclose(state["p/v"], v2, rtol=1e-14)


def test_adam_state_roundtrip_continues_identically() -> None:
    rng = np.random.default_rng(5)
    g = [{"p": rng.standard_normal(3).astype(np.float32)} for _ in range(3)]
    a, b = Adam(), Adam()
    pa = {"p": np.ones(3, dtype=np.float32)}
    a.step(pa, g[0], 0.01)
    pb = {"p": pa["p"].copy()}
    b.load_state_dict(a.state_dict())
    for step in g[1:]:
        a.step(pa, step, 0.01)
        b.step(pb, step, 0.01)
    np.testing.assert_array_equal(pa["p"], pb["p"])
    assert pa["p"].dtype == np.float32 and a.m["p"].dtype == np.float32


def test_sgd_step_counts_iterations() -> None:
    params = {"p": np.array([1.0, 2.0], dtype=np.float32)}
    sgd = SGD()
    sgd.step(params, {"p": np.array([0.5, -1.0], dtype=np.float32)}, 0.1)
    np.testing.assert_allclose(params["p"], [0.95, 2.1], rtol=1e-7)
    assert params["p"].dtype == np.float32
    assert sgd.state_dict() == {"iterations": 1}
    restored = SGD()
    restored.load_state_dict(sgd.state_dict())
    assert restored.iterations == 1


# -- NumpyModel ------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_float32_stays_float32(name: str, optimizer: str) -> None:
    model = NumpyModel(name, init_params(name, 0), optimizer=optimizer)
    x, y = _batch(4)
    assert model.logits(x.astype(np.float64)).dtype == np.float32
    loss, grads = model.loss_and_grads(x, y)
    assert isinstance(loss, float)
    assert {k: g.shape for k, g in grads.items()} == param_shapes(name)
    assert all(g.dtype == np.float32 for g in grads.values())
    model.train_step(x, y, 0.01)
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert all(a.dtype == np.float32 for k, a in model.optimizer_state_dict().items()
               if k != "iterations")


def test_float64_model_end_to_end() -> None:
    model = NumpyModel("cnn", init_params("cnn", 0), optimizer="adam", dtype=np.float64)
    x, y = _batch(3)
    assert model.logits(x).dtype == np.float64
    _, grads = model.loss_and_grads(x, y)
    assert all(g.dtype == np.float64 for g in grads.values())
    model.train_step(x, y, 1e-3)
    assert all(p.dtype == np.float64 for p in model.params.values())


def test_protocol_attributes_and_params_are_copies() -> None:
    params = init_params("mlp128", 0)
    model = NumpyModel("mlp128", params)
    assert (model.backend, model.model_name, model.optimizer) == ("numpy", "mlp128", "sgd")
    copy = model.params
    copy["dense1/W"][:] = 0
    assert np.any(model.params["dense1/W"] != 0)
    model.set_params({k: np.zeros_like(v) for k, v in params.items()})
    x, _ = _batch(2)
    np.testing.assert_array_equal(model.logits(x), np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError):
        NumpyModel("mlp128", {"dense1/W": params["dense1/W"]})


@pytest.mark.parametrize("name", ["mlp128", "cnn"])
def test_train_step_reports_loss_before_update_and_learns(name: str) -> None:
    model = NumpyModel(name, init_params(name, 0), optimizer="sgd")
    x, y = _batch(16, seed=6)
    expected_loss, _ = model.loss_and_grads(x, y)
    expected_correct = int(np.sum(model.logits(x).argmax(axis=1) == y))
    loss, correct = model.train_step(x, y, 0.1)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert correct == expected_correct and isinstance(correct, int)
    losses = [loss] + [model.train_step(x, y, 0.1)[0] for _ in range(20)]
    assert losses[-1] < 0.85 * losses[0]


def test_train_step_equals_loss_and_grads_then_apply() -> None:
    x, y = _batch(8)
    a = NumpyModel("cnn", init_params("cnn", 1), optimizer="adam")
    b = NumpyModel("cnn", init_params("cnn", 1), optimizer="adam")
    for _ in range(2):
        a.train_step(x, y, 1e-3)
        _, grads = b.loss_and_grads(x, y)
        b.apply(grads, 1e-3)
    for key, p in a.params.items():
        np.testing.assert_array_equal(p, b.params[key])
    assert int(a.optimizer_state_dict()["iterations"]) == 2


def test_optimizer_state_roundtrip_through_model() -> None:
    x, y = _batch(8)
    a = NumpyModel("mlp128", init_params("mlp128", 0), optimizer="adam")
    a.train_step(x, y, 1e-3)
    b = NumpyModel("mlp128", a.params, optimizer="adam")
    b.load_optimizer_state_dict(a.optimizer_state_dict())
    a.train_step(x, y, 1e-3)
    b.train_step(x, y, 1e-3)
    for key, p in a.params.items():
        np.testing.assert_array_equal(p, b.params[key])


def test_logits_in_chunks_equals_one_pass() -> None:
    model = NumpyModel("cnn", init_params("cnn", 0))
    x, _ = _batch(1100)
    chunked = model.logits(x)
    direct = np.concatenate([model._forward(x[:600]), model._forward(x[600:])])
    assert chunked.shape == (1100, 10)
    np.testing.assert_allclose(chunked, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inference_logits_equal_training_forward(name: str) -> None:
    model = NumpyModel(name, init_params(name, 0))
    x, _ = _batch(30)
    train_logits = model._forward(x)
    np.testing.assert_allclose(model.logits(x), train_logits, rtol=1e-6, atol=1e-6)
    # Inference keeps no caches: the training caches are those of the forward above.
    model.logits(x[:3])
    if name == "cnn":
        assert model.layers[0].cache_cols.shape[0] == 30 * 28 * 28


def test_maxpool_inference_matches_training_forward() -> None:
    x = np.random.default_rng(7).standard_normal((3, 4, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(MaxPool2D().forward(x, train=False), MaxPool2D().forward(x))


@pytest.mark.parametrize("c_in", [1, 3])
def test_pool_order_im2col_permutes_the_rows(c_in: int) -> None:
    xpad = np.random.default_rng(8).standard_normal((2, 6, 8, c_in))  # 4x6 images
    plain = im2col_3x3(xpad).reshape(2, 2, 2, 3, 2, 9 * c_in)  # (n, i', a, j', b, taps)
    pooled = im2col_3x3(xpad, pool_order=True).reshape(2, 2, 2, 2, 3, 9 * c_in)
    np.testing.assert_array_equal(pooled, plain.transpose(2, 4, 0, 1, 3, 5))


@pytest.mark.parametrize("c_in", [1, 3])
def test_conv_relu_pool_equals_the_three_layers(c_in: int) -> None:
    rng = np.random.default_rng(9)
    conv = Conv2D(rng.standard_normal((3, 3, c_in, 4)), rng.standard_normal(4))
    fused = ConvReLUPool(conv)
    for shape in [(3, 4, 6, c_in), (2, 8, 8, c_in)]:  # new shapes reuse no stale buffer
        x = rng.standard_normal(shape)
        layers = MaxPool2D().forward(ReLU().forward(conv.forward(x)))
        np.testing.assert_allclose(fused.forward(x), layers, rtol=1e-12, atol=1e-12)


def test_window_major_layers_match_nhwc_layers() -> None:
    rng = np.random.default_rng(11)
    W, b = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    x = rng.standard_normal((2, 4, 6, 3))
    nhwc, wm = Conv2D(W, b), Conv2D(W, b, window_major=True)
    z, z_wm = nhwc.forward(x), wm.forward(x)
    assert z_wm.shape == (4, 2, 2, 3, 4)
    np.testing.assert_array_equal(window_major_to_nhwc(z_wm), z)
    # Ties (rounded values) and ReLU-like zeros exercise the first-arg-max routing.
    z = np.round(np.maximum(z, 0))
    z_wm = z.reshape(2, 2, 2, 3, 2, 4).transpose(2, 4, 0, 1, 3, 5).reshape(4, 2, 2, 3, 4)
    pool, pool_wm = MaxPool2D(), MaxPool2D(window_major=True)
    np.testing.assert_array_equal(pool_wm.forward(z_wm), pool.forward(z))
    dy = rng.standard_normal((2, 2, 3, 4))
    dz, dz_wm = pool.backward(dy), pool_wm.backward(dy)
    np.testing.assert_array_equal(window_major_to_nhwc(dz_wm), dz)
    dx, dx_wm = nhwc.backward(dz), wm.backward(dz_wm)
    np.testing.assert_allclose(dx_wm, dx, rtol=1e-12, atol=1e-12)
    for key in ("W", "b"):
        np.testing.assert_allclose(wm.grads[key], nhwc.grads[key], rtol=1e-12, atol=1e-12)


def test_conv_relu_pool_rejects_odd_sizes_and_training() -> None:
    conv = Conv2D(np.ones((3, 3, 1, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="even height and width"):
        ConvReLUPool(conv).forward(np.ones((1, 5, 4, 1)))
    with pytest.raises(ValueError, match="inference"):
        ConvReLUPool(conv).forward(np.ones((1, 4, 4, 1)), train=True)


def test_relu_and_add_bias_helpers() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 2, 5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    np.testing.assert_array_equal(relu(x), np.maximum(x, 0))
    expected = x + b
    np.testing.assert_array_equal(add_bias(x, b), expected)
    np.testing.assert_array_equal(x, expected)  # in place
    same = relu(x, out=x)
    assert same is x and x.min() >= 0
    assert relu(np.zeros((0, 3, 3, 4), np.float32)).shape == (0, 3, 3, 4)
    with pytest.raises(ValueError, match="C-contiguous"):
        relu(x[:, :, ::2], out=x[:, :, ::2])


def test_logits_of_no_images() -> None:
    for name in ("mlp128", "cnn"):
        logits = NumpyModel(name, init_params(name, 0)).logits(np.zeros((0, 28, 28, 1)))
        assert logits.shape == (0, 10) and logits.dtype == np.float32


def test_inference_chunks() -> None:
    # conv2's im2col matrix is 196 x 144 floats per image; 3 MB holds 27 of them.
    assert image_chunk("cnn") == 27
    model = NumpyModel("cnn", init_params("cnn", 0))
    assert [len(layers) for layers, _ in model._inference_stages] == [2, 4]
    assert [chunk for _, chunk in model._inference_stages] == [27, MAX_EVAL_CHUNK]
    # The MLPs start with Flatten: everything runs in the second stage.
    assert len(NumpyModel("linear", init_params("linear", 0))._inference_stages[0][0]) == 0


# -- independence from TensorFlow ----------------------------------------------------


def test_numpy_twin_works_without_tensorflow() -> None:
    code = """
import sys
sys.modules["tensorflow"] = None  # any import of tensorflow now raises ImportError
sys.modules["keras"] = None
import numpy as np
import twinnet.numpy_nn
from twinnet.models import init_params
from twinnet.numpy_nn import NumpyModel
model = NumpyModel("cnn", init_params("cnn", 0), optimizer="adam")
rng = np.random.default_rng(0)
x = rng.random((4, 28, 28, 1), dtype=np.float32)
loss, correct = model.train_step(x, rng.integers(0, 10, 4), 1e-3)
assert np.isfinite(loss) and 0 <= correct <= 4
assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
