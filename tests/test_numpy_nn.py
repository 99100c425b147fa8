"""Tests of the NumPy twin: gradient checks, reference forwards, optimizers, dtypes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from twinnet.numpy_nn.blocks import ConvReLUPool, DenseBlock, FlattenBlock
from twinnet.numpy_nn.graph import forward
from twinnet.numpy_nn.kernels import add_bias, im2col_3x3, relu

from twinnet import gradcheck
from twinnet.models import MODEL_NAMES, init_params, param_shapes
from twinnet.numpy_nn import SGD, Adam, NumpyModel, blocks, helpers, softmax_cross_entropy
from twinnet.numpy_nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from twinnet.util import chunk_slices
from twinnet.weights import WeightsError

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
    right_backward = DenseBlock.backward

    def wrong_backward(self: DenseBlock, dout: np.ndarray) -> np.ndarray | None:
        dx = right_backward(self, dout)
        self.grads[f"{self.name}/W"] *= 1.01
        return dx

    monkeypatch.setattr(DenseBlock, "backward", wrong_backward)
    rows = gradcheck.check_model("mlp128", seed=0)
    failed = {r.parameter for r in rows if not r.passed}
    assert failed == {"dense1/W", "dense2/W"}


def test_gradcheck_catches_a_wrong_reference_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    right_backward = Conv2D.backward
    monkeypatch.setattr(Conv2D, "backward", lambda self, dz: 0.99 * right_backward(self, dz))
    failed = {(r.target, r.parameter) for r in gradcheck.check_layers(seed=0) if not r.passed}
    assert failed == {("layer:Conv2D", "x")}


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
    np.testing.assert_allclose(Conv2D(W, b).forward(x), _conv_reference(x, W, b), rtol=1e-12, atol=1e-12)


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
    with pytest.raises(WeightsError, match="missing dense1/b"):
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


# -- fused blocks against the reference layers ------------------------------------------


def _block_data(shape: tuple[int, ...], dtype: type, rng: np.random.Generator) -> np.ndarray:
    """Random values; in float32, multiples of 1/8 in [-1, 1], so that every sum a block or
    a layer forms is exact whatever its order, and ties between maxima are common."""
    if dtype == np.float64:
        return rng.standard_normal(shape)
    return (rng.integers(-8, 9, size=shape) / 8).astype(np.float32)


def _compose(parts: list, x: np.ndarray, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    for part in parts:
        x = part.forward(x)
    d = dout.copy()
    for part in reversed(parts):
        d = part.backward(d)
    return x, d, parts[0].grads if hasattr(parts[0], "grads") else {}


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    tolerance = 1e-12 if expected.dtype == np.float64 else 1e-6
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 100])
@pytest.mark.parametrize(("c_in", "size"), [(1, 28), (16, 14)])
def test_conv_relu_pool_equals_the_reference_layers(dtype: type, n: int, c_in: int, size: int) -> None:
    rng = np.random.default_rng(n * c_in)
    W, b = _block_data((3, 3, c_in, 16), dtype, rng) / 4, _block_data((16,), dtype, rng)
    x = _block_data((n, size, size, c_in), dtype, rng)
    dout = _block_data((n, size // 2, size // 2, 16), dtype, rng)
    out, dx, grads = _compose([Conv2D(W, b), ReLU(), MaxPool2D()], x, dout)
    block = ConvReLUPool("conv", W, b)
    _assert_close(block.forward(x), out)
    _assert_close(block.backward(dout.copy()), dx)
    _assert_close(block.grads["conv/W"], grads["W"])
    _assert_close(block.grads["conv/b"], grads["b"])
    _assert_close(block.forward(x, train=False), out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 100])
@pytest.mark.parametrize("with_relu", [True, False])
def test_dense_block_equals_the_reference_layers(dtype: type, n: int, with_relu: bool) -> None:
    rng = np.random.default_rng(n)
    W, b = _block_data((64, 32), dtype, rng), _block_data((32,), dtype, rng)
    x, dout = _block_data((n, 64), dtype, rng), _block_data((n, 32), dtype, rng)
    out, dx, grads = _compose([Dense(W, b), ReLU()] if with_relu else [Dense(W, b)], x, dout)
    block = DenseBlock("dense", W, b, relu=with_relu)
    _assert_close(block.forward(x), out)
    _assert_close(block.backward(dout.copy()), dx)
    _assert_close(block.grads["dense/W"], grads["W"])
    _assert_close(block.grads["dense/b"], grads["b"])
    _assert_close(block.forward(x, train=False), out)


def test_flatten_block_equals_the_reference_layer() -> None:
    x = np.arange(2 * 7 * 7 * 16, dtype=np.float32).reshape(2, 7, 7, 16)
    block, layer = FlattenBlock(), Flatten()
    np.testing.assert_array_equal(block.forward(x), layer.forward(x))
    d = np.ones((2, 784), dtype=np.float32)
    np.testing.assert_array_equal(block.backward(d), layer.backward(d))


def test_first_block_skips_the_input_gradient() -> None:
    rng = np.random.default_rng(3)
    block = ConvReLUPool("conv1", rng.standard_normal((3, 3, 1, 2)), np.zeros(2), needs_input_grad=False)
    out = block.forward(rng.standard_normal((2, 4, 4, 1)))
    assert block.backward(np.ones_like(out)) is None
    assert block.grads["conv1/W"].shape == (3, 3, 1, 2) and block.grads["conv1/b"].shape == (2,)


def test_conv_relu_pool_rejects_odd_sizes() -> None:
    block = ConvReLUPool("conv1", np.ones((3, 3, 1, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="conv1: .*even height and width"):
        block.forward(np.ones((1, 5, 4, 1)))


def test_conv_relu_pool_buffers_follow_the_input_shape() -> None:
    rng = np.random.default_rng(12)
    W, b = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    block = ConvReLUPool("conv", W, b)
    for shape in [(3, 4, 6, 3), (2, 8, 8, 3), (3, 4, 6, 3)]:  # a new shape reuses no stale buffer
        x = rng.standard_normal(shape)
        expected = MaxPool2D().forward(ReLU().forward(Conv2D(W, b).forward(x)))
        np.testing.assert_allclose(block.forward(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("n", "size"), [(50, 41), (50, 18), (7, 100), (1, 1), (10, 3), (6, 2)])
def test_chunks_cover_the_batch_in_order_evenly(n: int, size: int) -> None:
    parts = chunk_slices(n, size)
    assert [i for part in parts for i in range(n)[part]] == list(range(n))
    lengths = [part.stop - part.start for part in parts]
    assert max(lengths) <= size and max(lengths) - min(lengths) <= 1
    assert len(parts) == -(-n // size)


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 40])  # one image per chunk; all in one
def test_conv_relu_pool_results_do_not_depend_on_its_chunks(chunk_bytes: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(14)
    W, b = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    x, dout = rng.standard_normal((5, 6, 8, 3)), rng.standard_normal((5, 3, 4, 4))
    out, dx, grads = _compose([Conv2D(W, b), ReLU(), MaxPool2D()], x, dout)
    monkeypatch.setattr(blocks, "CHUNK_BYTES", chunk_bytes)
    block = ConvReLUPool("conv", W, b)
    _assert_close(block.forward(x), out)
    block.forward(rng.standard_normal((9, 6, 8, 3)), train=False)  # reuses the work arrays
    _assert_close(block.backward(dout.copy()), dx)
    _assert_close(block.grads["conv/W"], grads["W"])


@pytest.mark.parametrize("c_in", [1, 3])
@pytest.mark.parametrize("pool_order", [False, True])
def test_fast_im2col_equals_the_reference(c_in: int, pool_order: bool) -> None:
    from twinnet.numpy_nn.layers import im2col_3x3 as reference_im2col

    xpad = np.random.default_rng(8).standard_normal((2, 6, 8, c_in))  # 4x6 images
    plain = reference_im2col(xpad)
    fast = im2col_3x3(xpad, pool_order=pool_order)
    if pool_order:  # rows ordered (a, b, n, i', j') instead of (n, i, j)
        plain = plain.reshape(2, 2, 2, 3, 2, 9 * c_in).transpose(2, 4, 0, 1, 3, 5).reshape(plain.shape)
    np.testing.assert_array_equal(fast, plain)


def test_relu_and_add_bias_kernels() -> None:
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


# -- the model as one graph -----------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_graph_is_one_list_of_blocks(name: str) -> None:
    model = NumpyModel(name, init_params(name, 0))
    kinds = [type(block).__name__ for block in model.blocks]
    expected = {
        "linear": ["FlattenBlock", "DenseBlock"],
        "mlp128": ["FlattenBlock", "DenseBlock", "DenseBlock"],
        "mlp256x2": ["FlattenBlock", "DenseBlock", "DenseBlock", "DenseBlock"],
        "cnn": ["ConvReLUPool", "ConvReLUPool", "FlattenBlock", "DenseBlock", "DenseBlock"],
    }
    assert kinds == expected[name]
    names = [block.name for block in model.blocks if hasattr(block, "W")]
    assert names == list(dict.fromkeys(key.split("/")[0] for key in param_shapes(name)))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inference_logits_equal_training_forward(name: str) -> None:
    model = NumpyModel(name, init_params(name, 0), threads=1)
    x, _ = _batch(30)
    train_logits = forward(model.blocks, x, train=True)
    np.testing.assert_allclose(model.logits(x), train_logits, rtol=1e-6, atol=1e-6)


def test_logits_in_chunks_equal_one_pass() -> None:
    model = NumpyModel("cnn", init_params("cnn", 0), threads=1)
    x, _ = _batch(1100)
    chunked = model.logits(x)
    direct = np.concatenate([forward(model.blocks, x[:600], train=False),
                             forward(model.blocks, x[600:], train=False)])
    assert chunked.shape == (1100, 10)
    np.testing.assert_allclose(chunked, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 100])
def test_threads_split_the_batch_without_changing_the_result(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from twinnet.numpy_nn import network

    monkeypatch.setattr(network, "MIN_PART_FLOPS", 1)  # split whatever the work
    name = "cnn"  # the model whose batches are split (the dense ones leave it to BLAS)
    params = {k: v.astype(np.float64) for k, v in init_params(name, 2).items()}
    x, y = _batch(n, seed=n)
    one, three = (NumpyModel(name, params, dtype=np.float64, threads=t) for t in (1, 3))
    assert three.parts == 3
    loss_1, grads_1 = one.loss_and_grads(x, y)
    loss_3, grads_3 = three.loss_and_grads(x, y)
    assert loss_3 == pytest.approx(loss_1, rel=1e-12)
    for key, g in grads_1.items():
        np.testing.assert_allclose(grads_3[key], g, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(three.logits(x), one.logits(x), rtol=1e-12, atol=1e-12)


def test_threaded_training_is_deterministic() -> None:
    x, y = _batch(100, seed=4)
    runs = []
    for _ in range(2):
        model = NumpyModel("cnn", init_params("cnn", 3), optimizer="adam", threads=2)
        for _ in range(3):
            model.train_step(x, y, 1e-3)
        runs.append(model.params)
    for key, p in runs[0].items():
        np.testing.assert_array_equal(p, runs[1][key])


def _train_three_steps(model: NumpyModel) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
    x, y = _batch(100, seed=5)
    steps = [model.train_step(x, y, 1e-3) for _ in range(3)]
    return steps, model.params, model.logits(x)


def _assert_same_run(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    for key, p in a[1].items():
        np.testing.assert_array_equal(p, b[1][key])
    np.testing.assert_array_equal(a[2], b[2])


@pytest.mark.skipif(not helpers.available(), reason="helper processes need POSIX")
def test_helper_processes_compute_what_threads_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    with_helpers = NumpyModel("cnn", init_params("cnn", 3), optimizer="adam", threads=2)
    run_helpers = _train_three_steps(with_helpers)
    assert with_helpers._helpers is not None  # the second part ran in a helper process
    monkeypatch.setattr(helpers, "available", lambda: False)
    with_threads = NumpyModel("cnn", init_params("cnn", 3), optimizer="adam", threads=2)
    _assert_same_run(run_helpers, _train_three_steps(with_threads))
    assert with_threads._helpers is None and with_threads._replicas is not None


@pytest.mark.skipif(not helpers.available(), reason="helper processes need POSIX")
def test_a_helper_that_dies_hands_its_part_to_a_thread(caplog: pytest.LogCaptureFixture) -> None:
    model = NumpyModel("cnn", init_params("cnn", 3), optimizer="adam", threads=2)
    reference = NumpyModel("cnn", init_params("cnn", 3), optimizer="adam", threads=2)
    x, y = _batch(100, seed=5)
    for m in (model, reference):
        m.train_step(x, y, 1e-3)
    model._helpers[0].process.kill()
    model._helpers[0].process.wait()
    with caplog.at_level("WARNING"):
        _assert_same_run(_train_three_steps(model), _train_three_steps(reference))
    assert "run on threads" in caplog.text and model._helpers is None


@pytest.mark.skipif(not helpers.available(), reason="helper processes need POSIX")
def test_without_room_for_shared_memory_the_parts_run_on_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    reference = _train_three_steps(NumpyModel("cnn", init_params("cnn", 3), threads=2))
    monkeypatch.setattr(helpers, "SHARED_DIR", str(tmp_path / "missing"))
    model = NumpyModel("cnn", init_params("cnn", 3), threads=2)
    with caplog.at_level("WARNING"):
        _assert_same_run(_train_three_steps(model), reference)
    assert "no helper processes" in caplog.text and model._helpers is None


@pytest.mark.skipif(not helpers.available(), reason="helper processes need POSIX")
def test_ctrl_c_is_left_to_the_parent(caplog: pytest.LogCaptureFixture) -> None:
    import signal

    model = NumpyModel("cnn", init_params("cnn", 3), threads=2)
    _train_three_steps(model)
    os.kill(model._helpers[0].process.pid, signal.SIGINT)  # as a terminal's Ctrl-C would
    with caplog.at_level("WARNING"):
        _train_three_steps(model)
    assert model._helpers is not None and not caplog.text


@pytest.mark.skipif(not helpers.available(), reason="helper processes need POSIX")
def test_a_helper_reports_its_errors_and_leaves_no_files() -> None:
    before = set(os.listdir(helpers.SHARED_DIR or tempfile.gettempdir()))
    model = NumpyModel("cnn", init_params("cnn", 3), threads=2)
    _train_three_steps(model)
    assert set(os.listdir(helpers.SHARED_DIR or tempfile.gettempdir())) == before  # unlinked at once
    worker = model._helpers[0]
    with worker.lock:
        worker.send(("logits", -1, 1))  # a model the helper does not know
        with pytest.raises(helpers.HelperError, match="KeyError: -1"):
            worker.receive()
        with pytest.raises(helpers.HelperError, match="did not answer in 0.05 s"):
            worker.receive(timeout=0.05)  # nothing was asked
    helpers.close_helpers()
    assert worker.process.poll() is not None


def test_logits_of_no_images() -> None:
    for name in ("mlp128", "cnn"):
        logits = NumpyModel(name, init_params(name, 0)).logits(np.zeros((0, 28, 28, 1)))
        assert logits.shape == (0, 10) and logits.dtype == np.float32

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
