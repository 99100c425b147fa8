"""Tests of the NumPy twin's lesson: the reference layers alone, losses, optimizers, the
network runner, ``NumpyModel`` on both paths, gradient checks, and the reference path
training on real MNIST. The fast path (numpy_nn/fast) is tested in test_fast.py."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from twinnet import gradcheck, models
from twinnet.models import MODEL_NAMES, init_params, param_shapes
from twinnet.numpy_nn import SGD, Adam, NumpyModel, make_optimizer, optimizer_state, softmax_cross_entropy
from twinnet.numpy_nn import model as model_module
from twinnet.numpy_nn.fast.blocks import DenseReLU
from twinnet.numpy_nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, same_padding
from twinnet.numpy_nn.network import MAX_EVAL_CHUNK, Network, build_layers
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
        "layer:SoftmaxCrossEntropy", "layer:AvgPool2D", "layer:Tanh", "layer:Sigmoid",
        "layer:LeakyReLU", "layer:Dropout", "layer:BatchNorm", "layer:BatchNorm2D",
    }
    for r in rows:
        assert r.passed and r.max_rel_error <= 1e-6, gradcheck.format_table(rows)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_passes_gradcheck(name: str, fast: bool) -> None:
    rows = gradcheck.check_model(name, seed=0, fast=fast)
    assert [r.parameter for r in rows] == list(param_shapes(name))
    for r in rows:
        assert r.passed and r.max_rel_error <= 1e-6, gradcheck.format_table(rows)


def test_gradcheck_catches_a_wrong_fused_block(monkeypatch: pytest.MonkeyPatch) -> None:
    right_backward = DenseReLU.backward

    def wrong_backward(self: DenseReLU, d: np.ndarray) -> np.ndarray | None:
        dx = right_backward(self, d)
        self.grads[f"{self.name}/W"] *= 1.01
        return dx

    monkeypatch.setattr(DenseReLU, "backward", wrong_backward)
    failed = {r.parameter for r in gradcheck.check_model("mlp128", seed=0) if not r.passed}
    assert failed == {"dense1/W"}  # dense2 has no ReLU after it: a reference Dense
    assert all(r.passed for r in gradcheck.check_model("mlp128", seed=0, fast=False))


def test_gradcheck_catches_a_wrong_reference_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    right_backward = Dense.backward

    def wrong_backward(self: Dense, dz: np.ndarray) -> np.ndarray:
        dx = right_backward(self, dz)
        self.grads[f"{self.name}/b"] = self.grads[f"{self.name}/b"] * 1.01
        return dx

    monkeypatch.setattr(Dense, "backward", wrong_backward)
    failed = {r.parameter for r in gradcheck.check_model("mlp128", seed=0, fast=False) if not r.passed}
    assert failed == {"dense1/b", "dense2/b"}


def test_gradcheck_catches_a_wrong_conv_input_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_parts_of_a_batch_add_up_to_the_batch() -> None:
    rng = np.random.default_rng(2)
    logits, y = rng.standard_normal((9, 10)), rng.integers(0, 10, size=9)
    loss, grad = softmax_cross_entropy(logits, y)
    first, d_first = softmax_cross_entropy(logits[:4], y[:4], total=9)
    second, d_second = softmax_cross_entropy(logits[4:], y[4:], total=9)
    assert first + second == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(np.concatenate([d_first, d_second]), grad, rtol=1e-14)


# -- the reference layers alone ---------------------------------------------------------


def _conv_reference(x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int,
                    pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Slow, obvious cross-correlation with explicit loops over a zero-padded input (tests only)."""
    xpad = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    n, hp, wp, c_in = xpad.shape
    k, c_out = W.shape[0], W.shape[3]
    h_out, w_out = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.zeros((n, h_out, w_out, c_out))
    for i_n in range(n):
        for i in range(h_out):
            for j in range(w_out):
                for o in range(c_out):
                    total = b[o]
                    for p in range(k):
                        for q in range(k):
                            for c in range(c_in):
                                total += xpad[i_n, i * stride + p, j * stride + q, c] * W[p, q, c, o]
                    out[i_n, i, j, o] = total
    return out


@pytest.mark.parametrize(("size", "kernel", "stride", "expected"), [
    (28, 3, 1, (1, 1)), (5, 3, 1, (1, 1)), (28, 5, 2, (1, 2)), (5, 4, 1, (1, 2)), (7, 3, 2, (1, 1)),
    (6, 1, 1, (0, 0)), (6, 3, 3, (0, 0)),
])
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int, expected: tuple) -> None:
    # TensorFlow: output ceil(size / stride), total padding max((out-1)*s + k - size, 0),
    # the odd one after.
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize(("c_in", "kernel", "stride", "padding", "pad"), [
    (1, 3, 1, "same", ((1, 1), (1, 1))),
    (3, 3, 1, "same", ((1, 1), (1, 1))),
    (2, 5, 2, "same", ((1, 2), (2, 2))),  # 4x5 input: out 2x3
    (2, 4, 1, "same", ((1, 2), (1, 2))),
    (2, 3, 1, "valid", ((0, 0), (0, 0))),
    (1, 2, 2, "valid", ((0, 0), (0, 0))),
])
def test_conv2d_forward_matches_loop_reference(c_in: int, kernel: int, stride: int, padding: str,
                                              pad: tuple) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, c_in))
    W = rng.standard_normal((kernel, kernel, c_in, 2))
    b = rng.standard_normal(2)
    conv = Conv2D("conv1", W, b, stride, padding)
    np.testing.assert_allclose(conv.forward(x), _conv_reference(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, "same"), (5, 2, "same"), (2, 2, "valid")])
def test_conv2d_backward_is_the_adjoint_of_its_forward(kernel: int, stride: int, padding: str) -> None:
    # The conv is linear in x: <forward(x) - b, d> = <x, backward(d)> for any x and d.
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((kernel, kernel, 2, 3)), rng.standard_normal(3)
    conv = Conv2D("conv1", W, b, stride, padding)
    x = rng.standard_normal((2, 6, 7, 2))
    z = conv.forward(x)
    d = rng.standard_normal(z.shape)
    dx = conv.backward(d)
    assert dx.shape == x.shape
    assert np.sum((z - b) * d) == pytest.approx(np.sum(x * dx), rel=1e-12)
    # and bilinear in (x, W): <forward(x) - b, d> = <W, dW>
    assert np.sum((z - b) * d) == pytest.approx(np.sum(W * conv.grads["conv1/W"]), rel=1e-12)
    np.testing.assert_allclose(conv.grads["conv1/b"], d.sum(axis=(0, 1, 2)), rtol=1e-12)


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


def test_maxpool_with_overlapping_windows_and_a_ragged_edge() -> None:
    # size 3, stride 2 over 5x6: windows overlap by one pixel, the last column is dropped.
    x = np.random.default_rng(5).standard_normal((2, 5, 6, 3))
    pool = MaxPool2D(3, 2)
    out = pool.forward(x)
    assert out.shape == (2, 2, 2, 3)
    for i in range(2):
        for j in range(2):
            window = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            np.testing.assert_array_equal(out[:, i, j], window.max(axis=(1, 2)))
    dx = pool.backward(np.ones_like(out))
    assert dx.sum() == out.size and np.all(dx[:, :, 5] == 0)  # each window passes on one


def test_relu_and_flatten_alone() -> None:
    relu, flatten = ReLU(), Flatten()
    x = np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu.forward(x), [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 6.0, 7.0]])), [[0.0, 0.0, 7.0]])
    image = np.arange(2 * 3 * 4 * 2.0).reshape(2, 3, 4, 2)
    flat = flatten.forward(image)
    np.testing.assert_array_equal(flat, image.reshape(2, 24))  # row-major over (H, W, C)
    np.testing.assert_array_equal(flatten.backward(flat), image)
    assert relu.params == flatten.params == {} and relu.grads == flatten.grads == {}


def test_dense_gradients_have_canonical_names_and_params_are_held_by_reference() -> None:
    rng = np.random.default_rng(6)
    W, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    dense = Dense("dense2", W, b)
    assert set(dense.params) == {"dense2/W", "dense2/b"} and dense.params["dense2/W"] is W
    x, dz = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(dense.forward(x), x @ W + b, rtol=1e-14)
    dx = dense.backward(dz)
    np.testing.assert_allclose(dx, dz @ W.T, rtol=1e-14)
    np.testing.assert_allclose(dense.grads["dense2/W"], x.T @ dz, rtol=1e-14)
    np.testing.assert_allclose(dense.grads["dense2/b"], dz.sum(axis=0), rtol=1e-14)
    W -= 1.0  # an optimizer's in-place update is what the layer computes with
    np.testing.assert_allclose(dense.forward(x), x @ W + b, rtol=1e-14)


def test_inference_forward_keeps_nothing_for_backward() -> None:
    # forward(train=False) between a training forward and its backward changes nothing.
    rng = np.random.default_rng(7)
    conv = Conv2D("conv1", rng.standard_normal((3, 3, 1, 2)), rng.standard_normal(2))
    stack = [conv, ReLU(), MaxPool2D(), Flatten(), Dense("dense1", rng.standard_normal((8, 3)), np.zeros(3))]
    x, other = rng.standard_normal((2, 4, 4, 1)), rng.standard_normal((3, 4, 4, 1))

    def run(inference_between: bool) -> list[np.ndarray]:
        out = x
        for layer in stack:
            out = layer.forward(out, train=True)
        if inference_between:
            o = other
            for layer in stack:
                o = layer.forward(o, train=False)
        d = np.ones_like(out)
        for layer in reversed(stack):
            d = layer.backward(d)
        return [d, conv.grads["conv1/W"]]

    for a, b in zip(run(False), run(True), strict=True):
        np.testing.assert_array_equal(a, b)


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

    state = optimizer_state.state_dict(adam)
    assert set(state) == {"p/m", "p/v", "iterations"}
    assert int(state["iterations"]) == 2
    np.testing.assert_allclose(state["p/m"], m2, rtol=1e-14)
    np.testing.assert_allclose(state["p/v"], v2, rtol=1e-14)


def test_adam_in_float32_stays_float32_and_close_to_float64() -> None:
    rng = np.random.default_rng(8)
    grads = [rng.standard_normal(5) for _ in range(3)]
    p32, p64 = {"p": np.ones(5, dtype=np.float32)}, {"p": np.ones(5)}
    a32, a64 = Adam(), Adam()
    for g in grads:
        a32.step(p32, {"p": g.astype(np.float32)}, 0.01)
        a64.step(p64, {"p": g}, 0.01)
    assert p32["p"].dtype == np.float32 and a32.m["p"].dtype == a32.v["p"].dtype == np.float32
    np.testing.assert_allclose(p32["p"], p64["p"], rtol=1e-6)


def test_adam_state_roundtrip_continues_identically() -> None:
    rng = np.random.default_rng(5)
    g = [{"p": rng.standard_normal(3).astype(np.float32)} for _ in range(3)]
    a, b = Adam(), Adam()
    pa = {"p": np.ones(3, dtype=np.float32)}
    a.step(pa, g[0], 0.01)
    pb = {"p": pa["p"].copy()}
    optimizer_state.load_state_dict(b, optimizer_state.state_dict(a))
    for step in g[1:]:
        a.step(pa, step, 0.01)
        b.step(pb, step, 0.01)
    np.testing.assert_array_equal(pa["p"], pb["p"])
    assert pa["p"].dtype == np.float32 and a.m["p"].dtype == np.float32


def test_adam_refuses_malformed_state_and_resets_on_empty() -> None:
    adam = Adam()
    with pytest.raises(ValueError, match="lacks 'iterations'"):
        optimizer_state.load_state_dict(adam, {"p/m": np.zeros(2)})
    with pytest.raises(ValueError, match="malformed Adam state"):
        optimizer_state.load_state_dict(adam, {"iterations": np.array(1), "p/m": np.zeros(2)})
    adam.step({"p": np.ones(2)}, {"p": np.ones(2)}, 0.1)
    optimizer_state.load_state_dict(adam, {})
    assert adam.iterations == 0 and adam.m == {} and adam.v == {}


def test_an_optimizer_updates_only_what_has_a_gradient() -> None:
    for opt in (SGD(), Adam()):
        params = {"a": np.ones(2), "b": np.ones(2)}
        opt.step(params, {"a": np.ones(2)}, 0.1)
        assert np.all(params["a"] < 1) and np.all(params["b"] == 1)


def test_sgd_step_counts_iterations() -> None:
    params = {"p": np.array([1.0, 2.0], dtype=np.float32)}
    sgd = SGD()
    sgd.step(params, {"p": np.array([0.5, -1.0], dtype=np.float32)}, 0.1)
    np.testing.assert_allclose(params["p"], [0.95, 2.1], rtol=1e-7)
    assert params["p"].dtype == np.float32
    assert optimizer_state.state_dict(sgd) == {"iterations": 1}
    restored = SGD()
    optimizer_state.load_state_dict(restored, optimizer_state.state_dict(sgd))
    assert restored.iterations == 1
    with pytest.raises(ValueError, match="SGD keeps only 'iterations'"):
        optimizer_state.load_state_dict(restored, {"p/m": np.zeros(2), "iterations": np.array(1)})


def test_make_optimizer_by_name() -> None:
    assert isinstance(make_optimizer("sgd"), SGD) and isinstance(make_optimizer("adam"), Adam)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop")


# -- the network runner ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_layers_follows_the_spec(name: str) -> None:
    built = build_layers(name, init_params(name, 0))
    kinds = [type(layer).__name__ for layer in built]
    expected = {
        "linear": ["Flatten", "Dense"],
        "mlp128": ["Flatten", "Dense", "ReLU", "Dense"],
        "mlp256x2": ["Flatten", "Dense", "ReLU", "Dense", "ReLU", "Dense"],
        "cnn": ["Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "ReLU",
                "Dense"],
    }
    assert kinds == expected[name]
    assert [key for layer in built for key in layer.params] == list(param_shapes(name))


def test_build_layers_refuses_a_layer_it_has_no_class_for() -> None:
    @dataclass(frozen=True)
    class UnknownSpec:
        """A layer kind the NumPy twin has no class for."""

    with pytest.raises(ValueError, match="no layer for UnknownSpec"):
        build_layers((models.FlattenSpec(), UnknownSpec()), {})


def test_network_runs_any_list_of_layers() -> None:
    # Not one of the four: a valid 5x5 stride-2 conv, an overlapping pool, no ReLU.
    rng = np.random.default_rng(9)
    net = Network([Conv2D("conv1", 0.1 * rng.standard_normal((5, 5, 1, 3)), np.zeros(3), 2, "valid"),
                   MaxPool2D(3, 2), Flatten(),
                   Dense("dense1", 0.1 * rng.standard_normal((75, 10)), np.zeros(10))])
    x, y = _batch(4)
    record: dict = {}
    loss, correct, grads = net.loss_and_grads(x.astype(np.float64), y, record=record)
    assert np.isfinite(loss) and 0 <= correct <= 4
    assert set(grads) == {"conv1/W", "conv1/b", "dense1/W", "dense1/b"}
    assert [o.shape for o in record["outputs"]] == [(4, 12, 12, 3), (4, 5, 5, 3), (4, 75), (4, 10)]
    assert [g.shape for g in record["grad_outputs"]] == [o.shape for o in record["outputs"]]
    assert record["grad_input"].shape == (4, 28, 28, 1)
    np.testing.assert_allclose(net.logits(x.astype(np.float64)), record["outputs"][-1], rtol=1e-14)


def test_train_step_reaches_conv2d_backward_in_two_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    callers: list[list[str]] = []
    right_backward = Conv2D.backward

    def watched(self: Conv2D, dz: np.ndarray) -> np.ndarray:
        callers.append([frame.function for frame in inspect.stack()[1:3]])
        return right_backward(self, dz)

    monkeypatch.setattr(Conv2D, "backward", watched)
    model = NumpyModel("cnn", init_params("cnn", 0), fast=False)
    model.train_step(*_batch(2), 0.1)
    assert callers == [["loss_and_grads", "train_step"]] * 2


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inference_logits_equal_training_forward(name: str, fast: bool) -> None:
    model = NumpyModel(name, init_params(name, 0), threads=1, fast=fast)
    x, _ = _batch(30)
    network = model.network.network if fast else model.network
    train_logits = network.forward(x, train=True)
    np.testing.assert_allclose(model.logits(x), train_logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_logits_in_chunks_equal_one_pass(fast: bool) -> None:
    model = NumpyModel("cnn", init_params("cnn", 0), threads=1, fast=fast)
    x, _ = _batch(MAX_EVAL_CHUNK + 100)
    chunked = model.logits(x)
    network = model.network.network if fast else model.network
    direct = np.concatenate([network.forward(x[:600]), network.forward(x[600:])])
    assert chunked.shape == (MAX_EVAL_CHUNK + 100, 10)
    np.testing.assert_allclose(chunked, direct, rtol=1e-5, atol=1e-6)


# -- NumpyModel, on both paths ----------------------------------------------------------------

BOTH_PATHS = pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])


@BOTH_PATHS
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_float32_stays_float32(name: str, optimizer: str, fast: bool) -> None:
    model = NumpyModel(name, init_params(name, 0), optimizer=optimizer, fast=fast)
    x, y = _batch(4)
    assert model.logits(x.astype(np.float64)).dtype == np.float32
    loss, grads = model.loss_and_grads(x, y)
    assert isinstance(loss, float)
    assert [(k, g.shape) for k, g in grads.items()] == list(param_shapes(name).items())  # in order
    assert all(g.dtype == np.float32 for g in grads.values())
    model.train_step(x, y, 0.01)
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert all(a.dtype == np.float32 for k, a in model.optimizer_state_dict().items()
               if k != "iterations")


@BOTH_PATHS
def test_float64_model_end_to_end(fast: bool) -> None:
    model = NumpyModel("cnn", init_params("cnn", 0), optimizer="adam", dtype=np.float64, fast=fast)
    x, y = _batch(3)
    assert model.logits(x).dtype == np.float64
    _, grads = model.loss_and_grads(x, y)
    assert all(g.dtype == np.float64 for g in grads.values())
    model.train_step(x, y, 1e-3)
    assert all(p.dtype == np.float64 for p in model.params.values())
    assert all(a.dtype == np.float64 for k, a in model.optimizer_state_dict().items()
               if k != "iterations")


def test_float64_model_keeps_float64_from_float32_weights() -> None:
    # Weights files are float32; a float64 model computes in float64 from them.
    params = init_params("mlp128", 0)
    model = NumpyModel("mlp128", params, dtype=np.float64, fast=False)
    x, _ = _batch(2)
    expected = np.maximum(x.reshape(2, -1).astype(np.float64) @ params["dense1/W"].astype(np.float64), 0) \
        @ params["dense2/W"].astype(np.float64)
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-13)


def test_three_dimensional_images_get_their_channel_axis() -> None:
    model = NumpyModel("cnn", init_params("cnn", 0), fast=False)
    x, y = _batch(3)
    np.testing.assert_array_equal(model.logits(x[..., 0]), model.logits(x))
    assert model.loss_and_grads(x[..., 0], y)[0] == model.loss_and_grads(x, y)[0]


@BOTH_PATHS
def test_protocol_attributes_and_params_are_copies(fast: bool) -> None:
    params = init_params("mlp128", 0)
    model = NumpyModel("mlp128", params, fast=fast)
    assert (model.backend, model.model_name, model.optimizer) == ("numpy", "mlp128", "sgd")
    copy = model.params
    copy["dense1/W"][:] = 0
    assert np.any(model.params["dense1/W"] != 0)
    params["dense1/W"][:] = 0  # the model copied what it was given
    assert np.any(model.params["dense1/W"] != 0)
    model.set_params({k: np.zeros_like(v) for k, v in params.items()})
    x, _ = _batch(2)
    np.testing.assert_array_equal(model.logits(x), np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(WeightsError, match="missing dense1/b"):
        NumpyModel("mlp128", {"dense1/W": params["dense1/W"]}, fast=fast)
    with pytest.raises(WeightsError, match="dense1/W has shape"):
        model.set_params({**params, "dense1/W": np.zeros((3, 3), dtype=np.float32)})


@BOTH_PATHS
@pytest.mark.parametrize("name", ["mlp128", "cnn"])
def test_train_step_reports_loss_before_update_and_learns(name: str, fast: bool) -> None:
    model = NumpyModel(name, init_params(name, 0), optimizer="sgd", fast=fast)
    x, y = _batch(16, seed=6)
    expected_loss, _ = model.loss_and_grads(x, y)
    expected_correct = int(np.sum(model.logits(x).argmax(axis=1) == y))
    loss, correct = model.train_step(x, y, 0.1)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert correct == expected_correct and isinstance(correct, int)
    losses = [loss] + [model.train_step(x, y, 0.1)[0] for _ in range(20)]
    assert losses[-1] < 0.85 * losses[0]


@BOTH_PATHS
def test_train_step_equals_loss_and_grads_then_apply(fast: bool) -> None:
    x, y = _batch(8)
    a = NumpyModel("cnn", init_params("cnn", 1), optimizer="adam", fast=fast)
    b = NumpyModel("cnn", init_params("cnn", 1), optimizer="adam", fast=fast)
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
    b = NumpyModel("mlp128", a.params, optimizer="adam", fast=False)
    b.load_optimizer_state_dict(a.optimizer_state_dict())
    a.train_step(x, y, 1e-3)
    b.train_step(x, y, 1e-3)
    for key, p in a.params.items():
        np.testing.assert_allclose(p, b.params[key], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="optimizer state 'dense9/W/m' does not match model mlp128"):
        b.load_optimizer_state_dict({"iterations": np.array(1), "dense9/W/m": np.zeros(3)})


@BOTH_PATHS
def test_logits_of_no_images(fast: bool) -> None:
    for name in ("mlp128", "cnn"):
        logits = NumpyModel(name, init_params(name, 0), fast=fast).logits(np.zeros((0, 28, 28, 1)))
        assert logits.shape == (0, 10) and logits.dtype == np.float32


# -- the reference path trains, for real ---------------------------------------------------


def _test_accuracy(model: NumpyModel, mnist, n: int = 2000) -> float:
    return float(np.mean(model.logits(mnist.test.x[:n]).argmax(axis=1) == mnist.test.y[:n]))


@pytest.mark.parametrize(("name", "optimizer", "lr", "steps", "floor"), [
    ("mlp128", "sgd", 0.5, 150, 0.85),
    pytest.param("cnn", "adam", 2e-3, 40, 0.6, marks=pytest.mark.slow),  # ~15 s
])
def test_the_reference_layers_learn_mnist(mnist, name: str, optimizer: str, lr: float, steps: int,
                                          floor: float) -> None:
    model = NumpyModel(name, init_params(name, 0), optimizer=optimizer, fast=False)
    assert isinstance(model.network, Network) and all(
        type(layer) in (Conv2D, ReLU, MaxPool2D, Flatten, Dense) for layer in model.network.layers)
    before = _test_accuracy(model, mnist)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        rows = rng.integers(0, len(mnist.train), size=64)
        model.train_step(mnist.train.x[rows], mnist.train.y[rows], lr)
    assert before < 0.3 and _test_accuracy(model, mnist) >= floor


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
rng = np.random.default_rng(0)
x = rng.random((4, 28, 28, 1), dtype=np.float32)
for fast in (False, True):
    model = NumpyModel("cnn", init_params("cnn", 0), optimizer="adam", fast=fast)
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


def test_the_lesson_imports_no_engine() -> None:
    # The reference layers, losses, optimizers and runner need nothing from fast/.
    code = ("import sys, twinnet.numpy_nn.layers, twinnet.numpy_nn.losses, twinnet.numpy_nn.optimizers, "
            "twinnet.numpy_nn.network; print(sorted(m for m in sys.modules if '.fast' in m))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_denormal_adam_moments_are_flushed_and_move_no_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pixels 0-299 are lit in the first batch only: their weights' first moments then decay
    # by beta_1 each update, into the denormal range after about 800 updates.
    rng = np.random.default_rng(0)
    first = rng.random((10, 28, 28, 1), dtype=np.float32)
    rest = first.copy()
    rest.reshape(10, -1)[:, :300] = 0
    y = np.arange(10)
    runs = {}
    for flush_every in (model_module.FLUSH_EVERY, 10**9):
        monkeypatch.setattr(model_module, "FLUSH_EVERY", flush_every)
        model = NumpyModel("linear", init_params("linear", 0), optimizer="adam")
        model.train_step(first, y, 1e-3)
        for _ in range(900):
            model.train_step(rest, y, 1e-3)
        m = model._opt.m["dense1/W"]
        runs[flush_every] = (model.params, np.count_nonzero((m != 0) & (np.abs(m) < np.finfo(m.dtype).tiny)))
    (flushed, left), (kept, denormals) = runs.values()
    assert denormals > 0 and left == 0  # the case arose, and the flush took it
    for key, p in kept.items():
        np.testing.assert_array_equal(flushed[key], p)
