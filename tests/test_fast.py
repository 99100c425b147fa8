"""Tests of the NumPy twin's engine (numpy_nn/fast): each fused block equals the reference
layers it replaces, the fusion pass replaces exactly the runs it matches, the fast path
computes what the reference path computes, and the worker runtime (workers.py, fast_network.py)
gives the same results as the parts run in this process and survives dead, stopped and forked workers,
Ctrl-C, kill -9 and hostile working directories."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from twinnet import models
from twinnet.models import MODEL_NAMES, NAMED_MODELS, dropout_masks, init_params, param_shapes
from twinnet.numpy_nn import NumpyModel
from twinnet.numpy_nn.activations import LeakyReLU, Sigmoid, Tanh
from twinnet.numpy_nn.fast import budgets, fast_network, workers
from twinnet.numpy_nn.fast.blocks import ConvActPool, ConvReLUPool, DenseReLU
from twinnet.numpy_nn.fast.fusion import fuse
from twinnet.numpy_nn.fast.layer_blocks import (
    FastActivation,
    FastBatchNorm,
    FastConv2D,
    TiledAvgPool2D,
    TiledMaxPool2D,
)
from twinnet.numpy_nn.fast.primitives import (
    Scratch,
    add_bias,
    column_sums,
    conv_chunks,
    gram_by_images,
    im2col_rows,
    matmul_by_images,
    max_pool_blocks,
    relu,
    row_kernel,
    window_major_view,
)
from twinnet.numpy_nn.layers import AvgPool2D, Conv2D, Dense, MaxPool2D, ReLU, windows
from twinnet.numpy_nn.network import Network, build_layers
from twinnet.numpy_nn.normalization import BatchNorm
from twinnet.util import chunk_slices

SRC = Path(__file__).resolve().parents[1] / "src"


def _batch(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, size=n)


def _float64(name: str | tuple, seed: int = 0) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in init_params(name, seed).items()}


# -- fused blocks against the layers they replace ------------------------------------------


def _block_data(shape: tuple[int, ...], dtype: type, rng: np.random.Generator) -> np.ndarray:
    """Random values; in float32, multiples of 1/8 in [-1, 1], so that every sum a block or
    a layer forms is exact whatever its order, and ties between maxima are common."""
    if dtype == np.float64:
        return rng.standard_normal(shape)
    return (rng.integers(-8, 9, size=shape) / 8).astype(np.float32)


def _compose(layer_list: tuple | list, x: np.ndarray,
             dout: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The layers run one after the other: output, input gradient, the first one's grads."""
    for layer in layer_list:
        x = layer.forward(x)
    d = dout.copy()
    for layer in reversed(layer_list):
        d = layer.backward(d)
    return x, d, dict(layer_list[0].grads)


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    tolerance = 1e-12 if expected.dtype == np.float64 else 1e-6
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


def _conv_block(W: np.ndarray, b: np.ndarray, needs_input_grad: bool = True) -> ConvReLUPool:
    return ConvReLUPool(Conv2D("conv", W, b), ReLU(), MaxPool2D(), needs_input_grad=needs_input_grad)


def _assert_block_equals_its_layers(block, kinds: list[type], x: np.ndarray, dout: np.ndarray) -> None:
    """The block names the layers it replaces, and computes what they compute: output
    (training and inference), input gradient and every parameter's gradient."""
    assert [type(layer) for layer in block.replaces] == kinds
    out, dx, grads = _compose(block.replaces, x, dout)
    _assert_close(block.forward(x), out)
    _assert_close(block.backward(dout.copy()), dx)
    assert set(block.grads) == set(grads) == set(block.params)
    for key in grads:
        _assert_close(block.grads[key], grads[key])
    _assert_close(block.forward(x, train=False), out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 100])
@pytest.mark.parametrize(("c_in", "size"), [(1, 28), (16, 14), (3, (4, 6))])
def test_conv_relu_pool_equals_the_layers_it_replaces(dtype: type, n: int, c_in: int, size) -> None:
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(n * c_in)
    W, b = _block_data((3, 3, c_in, 16), dtype, rng) / 4, _block_data((16,), dtype, rng)
    x = _block_data((n, h, w, c_in), dtype, rng)
    dout = _block_data((n, h // 2, w // 2, 16), dtype, rng)
    _assert_block_equals_its_layers(_conv_block(W, b), [Conv2D, ReLU, MaxPool2D], x, dout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 100])
def test_dense_relu_equals_the_layers_it_replaces(dtype: type, n: int) -> None:
    rng = np.random.default_rng(n)
    W, b = _block_data((64, 32), dtype, rng), _block_data((32,), dtype, rng)
    x, dout = _block_data((n, 64), dtype, rng), _block_data((n, 32), dtype, rng)
    _assert_block_equals_its_layers(DenseReLU(Dense("dense", W, b), ReLU()), [Dense, ReLU], x, dout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("c_in", "kernel", "stride", "padding", "size"),
                         [(1, 5, 1, "same", 28), (6, 5, 1, "valid", 14), (3, 3, 2, "same", 9),
                          (2, 4, 3, "valid", 11), (4, 1, 1, "valid", 5), (4, 3, 1, "same", 6),
                          (3, 3, 2, "same", 5), (16, 3, 1, "same", 6)])
def test_fast_conv_equals_the_conv_it_replaces(dtype: type, c_in: int, kernel: int, stride: int,
                                               padding: str, size: int) -> None:
    rng = np.random.default_rng(c_in * kernel)
    W, b = _block_data((kernel, kernel, c_in, 5), dtype, rng) / 4, _block_data((5,), dtype, rng)
    conv = Conv2D("conv", W, b, stride=stride, padding=padding)
    x = _block_data((7, size, size, c_in), dtype, rng)
    dout = _block_data(conv.forward(x).shape, dtype, rng)
    _assert_block_equals_its_layers(FastConv2D(Conv2D("conv", W, b, stride=stride, padding=padding)),
                                    [Conv2D], x, dout)
    first = FastConv2D(conv, needs_input_grad=False)
    first.forward(x)
    assert first.backward(dout.copy()) is None
    _assert_close(first.grads["conv/W"], _compose([conv], x, dout)[2]["conv/W"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("size", "shape"),
                         [(2, (28, 28, 6)), (2, (10, 10, 16)), (3, (9, 6, 2)), (1, (4, 4, 3)),
                          (2, (7, 9, 3)), (3, (10, 8, 2))])  # the last two: rows and columns left out
def test_tiled_avg_pool_equals_the_pool_it_replaces(dtype: type, size: int, shape: tuple) -> None:
    rng = np.random.default_rng(size)
    x = _block_data((5, *shape), dtype, rng)
    dout = _block_data((5, shape[0] // size, shape[1] // size, shape[2]), dtype, rng)
    pool = AvgPool2D(size, size)
    assert TiledAvgPool2D.matches(pool, shape=shape)
    _assert_block_equals_its_layers(TiledAvgPool2D(AvgPool2D(size, size)), [AvgPool2D], x, dout)
    assert not TiledAvgPool2D.matches(AvgPool2D(2, 1), shape=shape)  # overlapping windows


def _batch_norm(rng: np.random.Generator, features: int) -> BatchNorm:
    offsets = {"gamma": 0.5, "beta": -0.5, "moving_mean": -0.5, "moving_variance": 0.1}
    params = {f"bn/{key}": rng.random(features, dtype=np.float32) + offset for key, offset in offsets.items()}
    return BatchNorm("bn", params, momentum=0.9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 6, 10, 3), (100, 28, 28, 16), (7, 12)])
def test_fast_batch_norm_equals_the_batch_norm_it_replaces(dtype: type, shape: tuple) -> None:
    rng = np.random.default_rng(len(shape))
    reference, fast = (_batch_norm(np.random.default_rng(4), shape[-1]) for _ in range(2))
    for bn in (reference, fast):
        bn.params.update({key: value.astype(dtype) for key, value in bn.params.items()})
        bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance = bn.params.values()
    x, d = _block_data(shape, dtype, rng) * 3 + 1, _block_data(shape, dtype, rng)
    block = FastBatchNorm(fast)
    assert block.replaces == (fast,)
    _assert_close(block.forward(x), reference.forward(x))
    _assert_close(block.backward(d.copy()), reference.backward(d.copy()))
    assert block.grads.keys() == reference.grads.keys() == {"bn/gamma", "bn/beta"}
    for key in reference.grads:
        _assert_close(block.grads[key], reference.grads[key])
    for key in reference.params:  # the moving statistics were updated alike
        _assert_close(fast.params[key], reference.params[key])
    # Inference: the same arithmetic in the same order, bit for bit.
    fast.params.update({key: value.copy() for key, value in reference.params.items()})
    fast.gamma, fast.beta, fast.moving_mean, fast.moving_variance = fast.params.values()
    np.testing.assert_array_equal(block.forward(x, train=False), reference.forward(x, train=False))


# conv (k, padding), batch norm or not, activation, pool; input (H, W).
CONV_ACT_POOLS = {
    "3x3 same, batch norm, ReLU, max": (3, "same", True, ReLU, MaxPool2D, (6, 8)),
    "5x5 same, tanh, average (LeNet-5's conv1)": (5, "same", False, Tanh, AvgPool2D, (8, 8)),
    "5x5 valid, tanh, average, a row and column left out": (5, "valid", False, Tanh, AvgPool2D, (9, 10)),
    "3x3 valid, batch norm, leaky ReLU, max": (3, "valid", True, lambda: LeakyReLU(0.1), MaxPool2D, (8, 7)),
    "1x1 same, sigmoid, max": (1, "same", False, Sigmoid, MaxPool2D, (4, 6)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("needs_input_grad", [True, False])
@pytest.mark.parametrize("kind", CONV_ACT_POOLS)
def test_conv_act_pool_trains_as_its_layers_and_infers_by_windows(dtype: type, needs_input_grad: bool,
                                                                  kind: str) -> None:
    k, padding, has_bn, act, pool, (h, w) = CONV_ACT_POOLS[kind]
    rng = np.random.default_rng(16)
    W, b = _block_data((k, k, 3, 4), dtype, rng) / k**2, _block_data((4,), dtype, rng)
    x = _block_data((6, h, w, 3), dtype, rng)

    def layers_of_the_block() -> list:
        bn = _batch_norm(np.random.default_rng(5), 4)
        bn.params.update({key: value.astype(dtype) for key, value in bn.params.items()})
        bn.params["bn/gamma"] -= 1  # some scales negative: a folded maximum must still be the maximum
        bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance = bn.params.values()
        return [Conv2D("conv", W.copy(), b.copy(), padding=padding), *([bn] if has_bn else []), act(), pool()]

    reference = layers_of_the_block()
    block = ConvActPool(*layers_of_the_block(), needs_input_grad=needs_input_grad)
    assert [type(layer) for layer in block.replaces] == [type(layer) for layer in reference]
    # Inference (before training moves the statistics): by pooling windows, up to rounding.
    expected = x
    for layer in reference:
        expected = layer.forward(expected, train=False)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(block.forward(x, train=False), expected, rtol=tolerance, atol=tolerance)
    # Training: the layers' blocks in turn.
    dout = _block_data(expected.shape, dtype, rng)
    out, dx, _ = _compose(reference, x, dout)
    _assert_close(block.forward(x), out)
    back = block.backward(dout.copy())
    assert (back is None) == (not needs_input_grad)
    if needs_input_grad:
        _assert_close(back, dx)
    expected_grads = {key: g for layer in reference for key, g in layer.grads.items()}
    assert list(block.grads) == list(expected_grads)
    for key, g in expected_grads.items():
        if has_bn and key == "conv/b":  # zero but for rounding: the batch norm takes the mean out
            scale = np.abs(expected_grads["conv/W"]).max()
            assert np.abs(block.grads[key]).max() < 1e-3 * scale and np.abs(g).max() < 1e-3 * scale
        else:
            _assert_close(block.grads[key], g)
    for key, moved in (reference[1].params.items() if has_bn else ()):  # moving statistics, updated alike
        _assert_close(block.params[key], moved)


@pytest.mark.parametrize(("make", "shape"), [
    (lambda rng: ReLU(), (7, 6, 10, 3)), (lambda rng: ReLU(), (7, 12)),
    (lambda rng: MaxPool2D(2, 2), (7, 6, 10, 3)), (lambda rng: MaxPool2D(3, 3), (7, 9, 6, 2)),
    (lambda rng: MaxPool2D(2, 2), (7, 7, 9, 3)),  # a last row and column no window reads
])
def test_inference_forms_infer_bit_for_bit_and_train_as_their_layer(make, shape: tuple) -> None:
    kind = {ReLU: FastActivation, MaxPool2D: TiledMaxPool2D}
    layer = make(np.random.default_rng(1))
    block = kind[type(layer)](make(np.random.default_rng(1)))
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(block.forward(x, train=False), layer.forward(x, train=False))
    out = block.forward(x)
    np.testing.assert_array_equal(out, layer.forward(x))
    d = np.random.default_rng(3).standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(block.backward(d), layer.backward(d))
    if isinstance(layer, MaxPool2D):  # where gradient checks look for kinks
        np.testing.assert_array_equal(block.layer.routing, layer.routing)
    assert block.grads.keys() == layer.grads.keys() and block.replaces[0] is not layer
    for key in layer.grads:
        np.testing.assert_array_equal(block.grads[key], layer.grads[key])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [0.0, 1e-30, 0.1, 0.2, 1 / 3, 0.7, 1.0])
def test_leaky_relu_trains_without_where_as_its_layer_byte_for_byte(alpha: float, dtype: type) -> None:
    # The larger of x and alpha * x, and d times a slope of 1 - alpha plus alpha: the same
    # bytes as np.where, signed zeros, tiny values and infinities included (+inf as input
    # only where alpha > 0: 0 * inf is NaN, the caveat of docs/performance.md).
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6, 7, 3)).astype(dtype)
    x.flat[:6] = [0.0, -0.0, 1e-40, -1e-40, -np.inf, np.inf if alpha else 2.0]
    d = rng.standard_normal(x.shape).astype(dtype)
    d.flat[:8] = [np.inf, -0.0, -np.inf, 0.0, np.inf, -np.inf, 1e-40, -0.0]
    layer, block = LeakyReLU(alpha), FastActivation(LeakyReLU(alpha))
    assert FastActivation.matches(layer, x.shape[1:])
    with np.errstate(invalid="ignore"):
        out, expected = block.forward(x), layer.forward(x)
        assert out.dtype == expected.dtype and out.tobytes() == expected.tobytes()
        np.testing.assert_array_equal(block.layer.cache, layer.cache)
        back, expected = block.backward(d), layer.backward(d)
        assert back.dtype == expected.dtype and back.tobytes() == expected.tobytes()
    assert not FastActivation.matches(LeakyReLU(1.5), x.shape[1:])  # then where() is not the larger


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_blocks_skip_the_input_gradient(dtype: type) -> None:
    rng = np.random.default_rng(3)
    W, b = _block_data((3, 3, 1, 4), dtype, rng), _block_data((4,), dtype, rng)
    x, dout = _block_data((5, 6, 8, 1), dtype, rng), _block_data((5, 3, 4, 4), dtype, rng)
    conv = _conv_block(W, b, needs_input_grad=False)
    out, _, grads = _compose(conv.replaces, x, dout)
    _assert_close(conv.forward(x), out)
    assert conv.backward(dout.copy()) is None
    _assert_close(conv.grads["conv/W"], grads["conv/W"])
    _assert_close(conv.grads["conv/b"], grads["conv/b"])

    dense = DenseReLU(Dense("dense1", _block_data((6, 3), dtype, rng), np.zeros(3, dtype)), ReLU(),
                      needs_input_grad=False)
    out = dense.forward(_block_data((4, 6), dtype, rng))
    assert dense.backward(np.ones_like(out)) is None and dense.grads["dense1/W"].shape == (6, 3)


def test_blocks_hold_the_layers_parameters_by_reference() -> None:
    W, b = np.zeros((3, 3, 1, 2)), np.zeros(2)
    block = _conv_block(W, b)
    assert block.params["conv/W"] is W and block.W is W and block.b is b
    W += 1.0  # an optimizer's in-place update
    assert block.forward(np.ones((1, 2, 2, 1))).max() > 0


def test_conv_relu_pool_refuses_what_it_does_not_replace() -> None:
    for conv in (Conv2D("conv1", np.ones((5, 5, 1, 2)), np.zeros(2)),
                 Conv2D("conv1", np.ones((3, 3, 1, 2)), np.zeros(2), stride=2),
                 Conv2D("conv1", np.ones((3, 3, 1, 2)), np.zeros(2), padding="valid")):
        with pytest.raises(ValueError, match="conv1: ConvReLUPool replaces only"):
            ConvReLUPool(conv, ReLU(), MaxPool2D())
    with pytest.raises(ValueError, match="ConvReLUPool replaces only"):
        ConvReLUPool(Conv2D("conv1", np.ones((3, 3, 1, 2)), np.zeros(2)), ReLU(), MaxPool2D(3, 2))


def test_conv_relu_pool_rejects_odd_sizes() -> None:
    block = _conv_block(np.ones((3, 3, 1, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="conv: .*even height and width"):
        block.forward(np.ones((1, 5, 4, 1)))


def test_conv_relu_pool_buffers_follow_the_input_shape() -> None:
    rng = np.random.default_rng(12)
    W, b = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    block = _conv_block(W, b)
    for shape in [(3, 4, 6, 3), (2, 8, 8, 3), (3, 4, 6, 3)]:  # a new shape reuses no stale buffer
        x = rng.standard_normal(shape)
        expected = MaxPool2D().forward(ReLU().forward(Conv2D("c", W, b).forward(x)))
        np.testing.assert_allclose(block.forward(x), expected, rtol=1e-12, atol=1e-12)
    block.forward(rng.standard_normal((2, 4, 4, 3)).astype(np.float32))  # and a new dtype
    assert block.forward(rng.standard_normal((2, 4, 4, 3))).dtype == np.float64


@pytest.mark.parametrize(("n", "size"), [(50, 41), (50, 18), (7, 100), (1, 1), (10, 3), (6, 2)])
def test_chunks_cover_the_batch_in_order_evenly(n: int, size: int) -> None:
    parts = chunk_slices(n, size)
    assert [i for part in parts for i in range(n)[part]] == list(range(n))
    lengths = [part.stop - part.start for part in parts]
    assert max(lengths) <= size and max(lengths) - min(lengths) <= 1
    assert len(parts) == -(-n // size)


@pytest.mark.parametrize("needs_input_grad", [True, False])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 40])  # one image per chunk; all in one
def test_conv_relu_pool_results_do_not_depend_on_its_chunks(chunk_bytes: int, needs_input_grad: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(14)
    W, b = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    x, dout = rng.standard_normal((5, 6, 8, 3)), rng.standard_normal((5, 3, 4, 4))
    reference = _conv_block(W, b)
    out, dx, grads = _compose(reference.replaces, x, dout)
    monkeypatch.setattr(budgets, "CHUNK_BYTES", chunk_bytes)
    block = _conv_block(W, b, needs_input_grad)
    assert (len(conv_chunks(x, block.W)) == len(x)) == (chunk_bytes == 1)
    _assert_close(block.forward(x), out)
    block.forward(rng.standard_normal((9, 6, 8, 3)), train=False)  # reuses the work arrays
    backward = block.backward(dout.copy())
    if needs_input_grad:
        _assert_close(backward, dx)
    _assert_close(block.grads["conv/W"], grads["conv/W"])
    _assert_close(block.grads["conv/b"], grads["conv/b"])


@pytest.mark.parametrize("c_in", [1, 3])
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 40])  # one image per chunk; all in one
def test_inference_by_pooling_windows_equals_the_training_form(c_in: int, chunk_bytes: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(15)
    W, b = rng.standard_normal((3, 3, c_in, 4)), rng.standard_normal(4)
    block = _conv_block(W, b)
    monkeypatch.setattr(budgets, "INFERENCE_CHUNK_BYTES", chunk_bytes)
    # More shapes than it keeps work arrays for, then the first (forgotten) one again.
    for shape in [(5, 6, 8), (3, 4, 4), (1, 2, 2), (2, 2, 4), (4, 4, 2), (5, 6, 8)]:
        x = rng.standard_normal((*shape, c_in))
        by_windows = block.forward(x, train=False)
        with monkeypatch.context() as switched:
            switched.setattr(ConvReLUPool, "infer_by_windows", False)
            np.testing.assert_allclose(by_windows, block.forward(x, train=False), rtol=1e-12, atol=1e-12)
    assert block._windows.plan.cache_info().currsize == budgets.KEPT_PLANS


# -- kernels --------------------------------------------------------------------------------


@pytest.mark.parametrize("c_in", [1, 3])
@pytest.mark.parametrize("pool_order", [False, True])
def test_fast_im2col_equals_the_reference_windows(c_in: int, pool_order: bool) -> None:
    xpad = np.random.default_rng(8).standard_normal((2, 6, 8, c_in))  # 4x6 images
    plain = windows(xpad, 3, 1).reshape(-1, 9 * c_in)  # what Conv2D.forward multiplies
    fast = im2col_rows(xpad, 3, pool_order=pool_order, scratch=Scratch())
    if pool_order:  # rows ordered (a, b, n, i', j') instead of (n, i, j)
        plain = plain.reshape(2, 2, 2, 3, 2, 9 * c_in).transpose(2, 4, 0, 1, 3, 5).reshape(plain.shape)
    np.testing.assert_array_equal(fast, plain)
    with pytest.raises(ValueError, match="C-contiguous NHWC"):
        im2col_rows(np.ones((2, 6, 8, 2))[..., ::-1][:, :, ::2], 3)


@pytest.mark.parametrize(("c_in", "k", "stride"), [(1, 5, 1), (6, 5, 1), (3, 3, 2), (2, 4, 3), (4, 1, 1)])
def test_padded_rows_times_row_kernel_is_the_im2col_product(c_in: int, k: int, stride: int) -> None:
    """A whole row of output pixels: its k padded input rows (contiguous) times
    row_kernel(W, W_out), the kernel at every column offset, is the conv's row."""
    rng = np.random.default_rng(k * stride)
    W, w_out = rng.standard_normal((k, k, c_in, 6)), 4
    xpad = rng.standard_normal((3, 9, (w_out - 1) * stride + k, c_in))
    expected = im2col_rows(xpad, k, stride) @ W.reshape(-1, 6)  # one row per output pixel
    h_out = len(expected) // (3 * w_out)
    rows = np.stack([xpad[:, p:p + stride * h_out:stride] for p in range(k)], axis=2)  # (N, H_out, k, Wp, C)
    product = rows.reshape(3 * h_out, -1) @ row_kernel(W, w_out, stride)
    np.testing.assert_allclose(product.reshape(expected.shape), expected, rtol=1e-12, atol=1e-12)


def test_max_pool_blocks_routes_as_max_pool_2d() -> None:
    x = np.random.default_rng(9).integers(-2, 3, size=(3, 4, 6, 2)).astype(np.float32)  # many ties
    pool = MaxPool2D()
    expected = pool.forward(x)
    z = np.ascontiguousarray(window_major_view(x)).reshape(4, 3, 2, 3, 2)
    routing = np.empty(z.shape, dtype=bool)
    np.testing.assert_array_equal(max_pool_blocks(z, routing), expected)
    np.testing.assert_array_equal(routing, pool.routing)
    back = np.zeros_like(x)
    window_major_view(back)[...] = z.reshape(2, 2, 3, 2, 3, 2)
    np.testing.assert_array_equal(back, x)  # the view writes NHWC


def test_relu_add_bias_and_column_sums_kernels() -> None:
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
    a = rng.standard_normal((50, 16))
    np.testing.assert_allclose(column_sums(a), a.sum(axis=0), rtol=1e-12)



@pytest.mark.parametrize("per_image", [True, False])
def test_products_by_images_are_one_products_values(monkeypatch, per_image: bool) -> None:
    """One BLAS call per image, or one for all (a small-matrix bound of 0), give a @ b and
    a.T @ b up to rounding; a may be a Fortran-ordered view (the C = 1 im2col matrix)."""
    monkeypatch.setattr(budgets, "SMALL_MATMUL", 10**9 if per_image else 0)
    rng = np.random.default_rng(11)
    images, rows = 6, 49
    for a in (rng.standard_normal((images * rows, 20)).astype(np.float32),
              np.asfortranarray(rng.standard_normal((images * rows, 9)).astype(np.float32))):
        b = rng.standard_normal((a.shape[1], 16)).astype(np.float32)
        out = np.full((images, 7, 7, 16), np.nan, dtype=np.float32)
        assert matmul_by_images(a, b, out, images) is out
        np.testing.assert_allclose(out.reshape(-1, 16), a @ b, rtol=1e-5, atol=1e-5)
        d = rng.standard_normal((len(a), 16)).astype(np.float32)
        np.testing.assert_allclose(gram_by_images(a, d, images), a.T @ d, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="C-contiguous"):  # a copy would lose the product
        matmul_by_images(a, b, np.empty((images * rows, 32), np.float32)[:, ::2], images)

# -- the fusion pass ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMED_MODELS)
def test_fusion_replaces_the_matching_runs_of_the_named_models(name: str) -> None:
    params = init_params(name, 0)
    reference = build_layers(name, params)
    fused = fuse(name, build_layers(name, params))
    kinds = [type(layer).__name__ for layer in fused]
    expected = {
        "linear": ["Flatten", "Dense"],
        "mlp128": ["Flatten", "DenseReLU", "Dense"],
        "mlp256x2": ["Flatten", "DenseReLU", "DenseReLU", "Dense"],
        "cnn": ["ConvReLUPool", "ConvReLUPool", "Flatten", "DenseReLU", "Dense"],
        "lenet5": ["ConvActPool", "ConvActPool", "Flatten", "Dense", "FastActivation", "Dense",
                   "FastActivation", "Dense"],
        "cnn-bn-dropout": ["ConvActPool", "ConvActPool", "Flatten", "Dropout",
                           "DenseReLU", "Dense"],
    }
    assert kinds == expected[name]
    # Unrolled, the blocks are the reference layers again, over the same arrays.
    unrolled = [part for layer in fused for part in getattr(layer, "replaces", (layer,))]
    assert [type(layer) for layer in unrolled] == [type(layer) for layer in reference]
    assert [key for layer in fused for key in layer.params] == list(param_shapes(name))
    assert all(layer.params[key] is params[key] for layer in fused for key in layer.params)
    # Only the first layer with parameters skips the input gradient.
    needs = [layer.needs_input_grad for layer in fused if hasattr(layer, "needs_input_grad")]
    assert all(needs_it == (i > 0) for i, needs_it in enumerate(needs))


# Not one of the four: a valid 4x4 conv to an odd 25x25 image, alone; a 3x3 'same' conv,
# ReLU and max-pool on it, which ConvReLUPool cannot take (odd) and ConvActPool does (the
# pool leaves out the last row and column); a run ConvReLUPool takes; a 5x5 stride-2 conv
# that stays; an overlapping pool; a dense -> ReLU run and a last dense that stays.
ODD_SPEC = {"layers": [
    {"type": "conv2d", "filters": 3, "kernel": 4, "padding": "valid"},  # 25x25x3
    {"type": "relu"},
    {"type": "conv2d", "filters": 4},  # 3x3 'same' on an odd image: ConvActPool
    {"type": "relu"},
    {"type": "maxpool2d"},  # 12x12x4
    {"type": "conv2d", "filters": 4},  # fuses
    {"type": "relu"},
    {"type": "maxpool2d"},  # 6x6x4
    {"type": "conv2d", "filters": 5, "kernel": 5, "stride": 2},  # 3x3x5
    {"type": "relu"},
    {"type": "conv2d", "filters": 4},  # 3x3 'same' but an overlapping pool: stays
    {"type": "relu"},
    {"type": "maxpool2d", "size": 2, "stride": 1},  # 2x2x4
    {"type": "flatten"},
    {"type": "dense", "units": 12},
    {"type": "relu"},
    {"type": "dense", "units": 10},
]}
ODD_KINDS = ["FastConv2D", "FastActivation", "ConvActPool", "ConvReLUPool", "FastConv2D", "FastActivation",
             "FastConv2D", "FastActivation", "MaxPool2D", "Flatten", "DenseReLU", "Dense"]


def _odd_spec() -> tuple:
    return models.parse_spec(ODD_SPEC, "odd.toml")


def test_fusion_leaves_every_other_layer_a_reference_layer() -> None:
    spec = _odd_spec()
    fused = fuse(spec, build_layers(spec, init_params(spec, 0)))
    assert [type(layer).__name__ for layer in fused] == ODD_KINDS
    assert not fused[0].needs_input_grad  # below the first conv lies only the image
    assert fused[2].needs_input_grad and fused[4].needs_input_grad and fused[10].needs_input_grad


def test_a_model_with_unfused_layers_runs_on_the_fast_path(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    # As a spec file, like a user's: the workers get its spec, not its path.
    path = tmp_path / "odd.toml"
    path.write_text("\n".join(["[[layers]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in layer.items())
                               for layer in ODD_SPEC["layers"]]))
    monkeypatch.setattr(budgets, "MIN_PART_FLOPS", 1)  # split whatever the work
    params = _float64(str(path), 1)
    x, y = _batch(6, seed=3)
    reference = NumpyModel(str(path), params, dtype=np.float64, fast=False)
    fast = NumpyModel(str(path), params, dtype=np.float64, threads=2)
    assert [type(layer).__name__ for layer in fast.network.network.layers] == ODD_KINDS
    _assert_same_loss_and_grads(reference, fast, x, y)
    assert fast.network._shared is not None  # it was split


# -- the fast path computes what the reference path computes --------------------------------


def _assert_same_loss_and_grads(reference: NumpyModel, fast: NumpyModel, x: np.ndarray,
                                y: np.ndarray) -> None:
    loss_r, grads_r = reference.loss_and_grads(x, y)
    loss_f, grads_f = fast.loss_and_grads(x, y)
    assert loss_f == pytest.approx(loss_r, rel=1e-10, abs=0)
    assert list(grads_f) == list(grads_r) == list(param_shapes(reference.model_name))
    for key, g in grads_r.items():
        # 1e-10 relative to the tensor's scale: an entry that cancels to ~0 is not resolved
        # more finely than its neighbours' rounding.
        np.testing.assert_allclose(grads_f[key], g, rtol=1e-10, atol=1e-10 * np.abs(g).max(), err_msg=key)
    np.testing.assert_allclose(fast.logits(x), reference.logits(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fast_and_reference_paths_agree_in_float64(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets, "MIN_PART_FLOPS", 1)  # split whatever the work
    params = _float64(name, 2)
    for key in params:  # biases away from zero, so their gradients are checked too
        if key.endswith("/b"):
            params[key] += 0.05
    x, y = _batch(64, seed=1)
    reference = NumpyModel(name, params, dtype=np.float64, fast=False)
    fast = NumpyModel(name, params, dtype=np.float64, threads=2)
    _assert_same_loss_and_grads(reference, fast, x, y)
    if name == "cnn":  # split in two (the dense-only models leave the cores to BLAS: one part)
        assert fast.network._shared is not None
    # and after training, from the same state
    for model in (reference, fast):
        for _ in range(2):
            model.train_step(x, y, 0.05)
    _assert_same_loss_and_grads(reference, fast, x, y)


@pytest.mark.slow
def test_fast_and_reference_paths_train_alike_on_mnist(mnist) -> None:
    runs = []
    for fast in (False, True):
        model = NumpyModel("cnn", init_params("cnn", 0), optimizer="adam", fast=fast, threads=2)
        rng = np.random.default_rng(0)
        for _ in range(60):
            rows = rng.integers(0, len(mnist.train), size=100)
            model.train_step(mnist.train.x[rows], mnist.train.y[rows], 1e-3)
        runs.append(model.logits(mnist.test.x[:2000]).argmax(axis=1))
    accuracy = [float(np.mean(run == mnist.test.y[:2000])) for run in runs]
    assert min(accuracy) > 0.85 and abs(accuracy[0] - accuracy[1]) <= 0.01


# -- batch splitting ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 100])
def test_splitting_the_batch_does_not_change_the_result(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets, "MIN_PART_FLOPS", 1)  # split whatever the work
    params = _float64("cnn", 2)
    x, y = _batch(n, seed=n)
    one, three = (NumpyModel("cnn", params, dtype=np.float64, threads=t) for t in (1, 3))
    assert three.network.parts == 3
    loss_1, grads_1 = one.loss_and_grads(x, y)
    loss_3, grads_3 = three.loss_and_grads(x, y)
    assert loss_3 == pytest.approx(loss_1, rel=1e-12)
    for key, g in grads_1.items():
        np.testing.assert_allclose(grads_3[key], g, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(three.logits(x), one.logits(x), rtol=1e-12, atol=1e-12)


def test_parts_are_contiguous_and_each_worth_a_core() -> None:
    network = NumpyModel("cnn", init_params("cnn", 0), threads=3).network
    least = budgets.MIN_PART_FLOPS
    assert network._split(2, least / 2) == [slice(0, 2)]  # too little work to hand over
    assert len(network._split(100, 2.5 * least)) == 2
    assert network._split(2, 10 * least) == [slice(0, 1), slice(1, 2)]  # at most one part an image
    parts = network._split(100, 10 * least)  # at most one part a core
    assert len(parts) == 3 and parts[0].start == 0 and parts[-1].stop == 100
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    for name in ("linear", "mlp256x2"):  # dense-only: BLAS's own threads, one part
        assert NumpyModel(name, init_params(name, 0), threads=4).network.parts == 1


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


# -- the worker runtime ---------------------------------------------------------------------


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch):
    """Workers allowed (a test that gives them up does so only for itself); any workers a
    test spoiled are closed after it."""
    monkeypatch.setattr(fast_network, "_use_processes", True)
    yield
    if any(w.process.poll() is not None for w in workers._workers):
        workers.close_workers()


def _cnn(seed: int = 3, optimizer: str = "adam") -> NumpyModel:
    return NumpyModel("cnn", init_params("cnn", seed), optimizer=optimizer, threads=2)


def _train_three_steps(model: NumpyModel) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
    x, y = _batch(100, seed=5)
    steps = [model.train_step(x, y, 1e-3) for _ in range(3)]
    return steps, model.params, model.logits(x)


def _assert_same_run(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    for key, p in a[1].items():
        np.testing.assert_array_equal(p, b[1][key])
    np.testing.assert_array_equal(a[2], b[2])


def _on_workers(model: NumpyModel) -> bool:
    """Whether the model's last split ran on worker processes (rather than in this process)."""
    network = model.network
    return (network._shared is not None and fast_network._use_processes
            and network._owner == (os.getpid(), workers.generation()))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_workers_compute_what_this_process_computes(runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    with_workers = _cnn()
    run_workers = _train_three_steps(with_workers)
    assert _on_workers(with_workers) and workers._workers
    monkeypatch.setattr(fast_network, "_use_processes", False)
    here = _cnn()
    _assert_same_run(run_workers, _train_three_steps(here))  # bit for bit
    assert here.network._shared is None


@pytest.mark.parametrize("name", ["cnn", "lenet5"])
def test_inference_pieces_give_the_same_bits_whoever_computes_them(name: str, runtime,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(6).random((1000, 28, 28, 1), dtype=np.float32)
    model = NumpyModel(name, init_params(name, 1), threads=2)
    pieces = model.network._inference_pieces(len(x))
    assert len(pieces) > 2 and pieces[0].start == 0 and pieces[-1].stop == len(x)
    with threadpool_limits(limits=1, user_api="blas"):  # as the pieces run
        alone = np.concatenate([model.network.network.logits(x[piece]) for piece in pieces])
    np.testing.assert_array_equal(model.logits(x), alone)  # the workers and this process
    assert _on_workers(model)
    stopped = workers.get_workers(1)[0].process.pid
    os.kill(stopped, signal.SIGSTOP)  # a worker that another program holds up
    try:
        timer = threading.Timer(0.5, os.kill, (stopped, signal.SIGCONT))
        timer.start()
        np.testing.assert_array_equal(model.logits(x), alone)  # this process took more pieces
    finally:
        timer.join()
        os.kill(stopped, signal.SIGCONT)
    monkeypatch.setattr(fast_network, "_use_processes", False)
    here = NumpyModel(name, init_params(name, 1), threads=2)
    np.testing.assert_array_equal(here.logits(x), alone)
    assert here.network._shared is None


MIX = str(Path(__file__).parents[1] / "scripts" / "specs" / "mix.toml")  # every kind of layer


@pytest.mark.parametrize("name", ["cnn-bn-dropout", MIX])
def test_batch_norm_and_dropout_parts_use_the_whole_batchs_statistics_and_masks(name: str, runtime) -> None:
    params = _float64(name, 3)
    x, y = _batch(100, seed=5)
    masks = dropout_masks(name, len(x), seed=4, step=0)
    split_up = NumpyModel(name, params, dtype=np.float64, threads=2)
    whole = NumpyModel(name, params, dtype=np.float64, threads=1)
    for model in (split_up, whole):
        model.set_dropout_masks(masks)
    loss_2, grads_2 = split_up.loss_and_grads(x, y)
    assert _on_workers(split_up)
    loss_1, grads_1 = whole.loss_and_grads(x, y)
    assert loss_2 == pytest.approx(loss_1, rel=1e-12)
    for key, g in grads_1.items():
        # (a conv's bias before a batch norm has a gradient of zero, up to rounding)
        np.testing.assert_allclose(grads_2[key], g, rtol=1e-9, atol=1e-9 * np.abs(g).max() + 1e-12)
    for key, p in whole.params.items():  # the moving statistics, updated from the whole batch
        np.testing.assert_allclose(split_up.params[key], p, rtol=1e-12, atol=1e-12)
    assert split_up.loss_and_grads(x, y)[0] == split_up.loss_and_grads(x, y)[0]  # the same bits again


def test_workers_compute_what_one_part_computes_up_to_rounding(runtime) -> None:
    params = _float64("cnn", 3)
    x, y = _batch(100, seed=5)
    split_up = NumpyModel("cnn", params, dtype=np.float64, threads=2)
    whole = NumpyModel("cnn", params, dtype=np.float64, threads=1)
    loss_2, grads_2 = split_up.loss_and_grads(x, y)
    assert _on_workers(split_up)
    loss_1, grads_1 = whole.loss_and_grads(x, y)
    assert loss_2 == pytest.approx(loss_1, rel=1e-12)
    for key, g in grads_1.items():
        np.testing.assert_allclose(grads_2[key], g, rtol=1e-10, atol=1e-10 * np.abs(g).max())
    np.testing.assert_allclose(split_up.logits(x), whole.logits(x), rtol=1e-12, atol=1e-12)


def test_a_worker_that_dies_hands_its_part_to_this_process(runtime, caplog: pytest.LogCaptureFixture) -> None:
    model, reference = _cnn(), _cnn()
    x, y = _batch(100, seed=5)
    for m in (model, reference):
        m.train_step(x, y, 1e-3)
    assert _on_workers(model)
    dead = workers._workers[0].process
    dead.kill()
    dead.wait()
    with caplog.at_level(logging.WARNING):
        _assert_same_run(_train_three_steps(model), _train_three_steps(reference))
    messages = _warnings(caplog)
    assert len(messages) == 1 and "run in this process" in messages[0] and f"worker {dead.pid}" in messages[0]
    assert not fast_network._use_processes and not workers._workers


def test_a_stopped_worker_ends_the_step_and_is_killed(runtime, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    model, reference = _cnn(), _cnn()
    x, y = _batch(100, seed=5)
    for m in (model, reference):
        m.train_step(x, y, 1e-3)
    assert _on_workers(model)
    monkeypatch.setattr(workers, "REPLY_SECONDS", 2)
    stopped = workers._workers[0].process.pid
    os.kill(stopped, signal.SIGSTOP)
    results: list = []
    step = threading.Thread(target=lambda: results.append(_train_three_steps(model)), daemon=True)
    try:
        with caplog.at_level(logging.WARNING):
            step.start()
            step.join(timeout=60)  # REPLY_SECONDS is 2: the step must not wait for the worker
        assert not step.is_alive(), "the step is still waiting for a stopped worker"
    finally:
        if _alive(stopped):
            os.kill(stopped, signal.SIGCONT)
    _assert_same_run(results[0], _train_three_steps(reference))
    messages = _warnings(caplog)
    assert len(messages) == 1 and "did not answer within 2 s" in messages[0]
    assert not _alive(stopped)  # killed, not left behind


def test_ctrl_c_while_waiting_leaves_the_next_step_working(runtime, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    model, reference = _cnn(), _cnn()
    x, y = _batch(100, seed=5)
    for m in (model, reference):
        m.train_step(x, y, 1e-3)
    right_receive = workers.Worker.receive
    interrupts = []

    def interrupted_once(self: workers.Worker, *args, **kwargs):
        if not interrupts:
            interrupts.append(self.process.pid)
            raise KeyboardInterrupt
        return right_receive(self, *args, **kwargs)

    monkeypatch.setattr(workers.Worker, "receive", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        model.train_step(x, y, 1e-3)  # interrupted before its update
    assert interrupts and not _alive(interrupts[0])  # its reply would answer the next request
    with caplog.at_level(logging.WARNING):
        _assert_same_run(_train_three_steps(model), _train_three_steps(reference))
    assert _on_workers(model) and not _warnings(caplog)


def test_ctrl_c_at_the_terminal_is_left_to_the_parent(runtime, caplog: pytest.LogCaptureFixture) -> None:
    model = _cnn()
    _train_three_steps(model)
    worker = workers._workers[0].process
    os.kill(worker.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole process group
    with caplog.at_level(logging.WARNING):
        _train_three_steps(model)
    assert _on_workers(model) and worker.poll() is None and not _warnings(caplog)


def test_a_worker_spins_for_a_request_only_while_its_core_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "SPIN_SECONDS", 0.1)
    monkeypatch.setattr(workers, "YIELD_SECONDS", 10.0)  # this machine's other work must not end the spin
    parent, child = multiprocessing.Pipe()
    started, cpu = time.monotonic(), time.process_time()
    workers._spin(child)  # nothing comes: gives up after SPIN_SECONDS, for serve to block
    spun = time.monotonic() - started
    assert spun >= 0.1 and not child.poll(0)
    assert time.process_time() - cpu > 0.1 * spun  # it ran, rather than slept
    threading.Timer(0.02, parent.send, ("request",)).start()
    started = time.monotonic()
    workers._spin(child)
    assert child.poll(0) and time.monotonic() - started < 0.1
    child.recv()
    # A yield that takes long: another program runs on the core. The worker gets off it.
    monkeypatch.setattr(workers, "YIELD_SECONDS", 0.005)
    monkeypatch.setattr(workers.os, "sched_yield", lambda: time.sleep(0.01))
    started = time.monotonic()
    workers._spin(child)
    assert time.monotonic() - started < 0.05 and not child.poll(0)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc")
def test_a_training_step_reuses_the_memory_of_the_last_one() -> None:
    # Without keep_freed_memory, glibc hands LeNet-5's arrays fresh pages from the system
    # step after step: hundreds of page faults each. In a new process: the heap of this one
    # depends on the tests before.
    code = textwrap.dedent("""
        import resource, numpy as np
        from twinnet.models import init_params
        from twinnet.numpy_nn.fast.fast_network import FastNetwork
        network = FastNetwork("lenet5", init_params("lenet5", 0), threads=1)
        rng = np.random.default_rng(0)
        x, y = rng.random((100, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 100)
        for _ in range(20):  # the heap grows to what a step needs
            network.loss_and_grads(x, y)
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(20):
            network.loss_and_grads(x, y)
        print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(result.stdout) < 20 * 50  # under 50 faults a step, where hundreds were


def test_a_worker_reports_its_errors_and_leaves_no_shared_files(runtime) -> None:
    model = _cnn()
    _train_three_steps(model)
    assert not Path("/dev/shm", model.network._shared.name).exists()  # unlinked once mapped
    worker = workers._workers[0]
    worker.send(fast_network._part_logits, -1, 0, 1)  # a model the worker does not know
    with pytest.raises(workers.WorkerError, match=f"worker {worker.process.pid} failed: KeyError: -1"):
        worker.receive()
    with pytest.raises(workers.WorkerError, match="did not answer within 0.05 s"):
        worker.receive(timeout=0.05)  # nothing was asked
    workers.close_workers()
    assert worker.process.poll() is not None and not workers._workers


def test_without_room_for_shared_memory_the_parts_run_in_this_process(
        runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fast_network, "_use_processes", False)
    reference = _train_three_steps(_cnn())
    monkeypatch.setattr(fast_network, "_use_processes", True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workers.shared_memory, "SharedMemory", full)
    model = _cnn()
    with caplog.at_level(logging.WARNING):
        _assert_same_run(_train_three_steps(model), reference)
    messages = _warnings(caplog)
    assert len(messages) == 1 and "run in this process" in messages[0]
    assert not fast_network._use_processes


def test_a_full_dev_shm_is_an_error_at_once_not_a_crash_later(
        runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """SharedMemory only sizes its file; the block is reserved at once (posix_fallocate),
    so a full /dev/shm is an OSError before any write (the parts run in this process) rather
    than a SIGBUS at the first write, and the file is removed."""
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = set(os.listdir("/dev/shm"))
    monkeypatch.setattr(os, "posix_fallocate", full)
    model = _cnn()
    with caplog.at_level(logging.WARNING):
        _train_three_steps(model)
    assert len(_warnings(caplog)) == 1 and not fast_network._use_processes
    assert set(os.listdir("/dev/shm")) <= before


# -- the worker runtime seen from a user's script ---------------------------------------------

TRAIN = """
import json, os, sys
import numpy as np
from twinnet.models import init_params
from twinnet.numpy_nn import NumpyModel
from twinnet.numpy_nn.fast import fast_network, workers

rng = np.random.default_rng(0)
x, y = rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64)
"""


def _script(tmp_path: Path, body: str, name: str = "script.py") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(TRAIN) + textwrap.dedent(body))
    return path


def _python(path: Path, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, str(path)], cwd=cwd or path.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _finish(process: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the script did not end:\n{out}\n{err}")
    assert process.returncode == 0, err
    assert "Traceback" not in err and "WARNING" not in err.upper(), err
    return out, err


def test_forked_children_do_not_train_on_the_parents_weights(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import logging
        import multiprocessing
        logging.basicConfig(level=logging.WARNING)

        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        model.train_step(x, y, 0.1)
        assert model.network._shared is not None  # the model is on its workers
        start = model.params

        def fine_tune(first):
            losses = [model.train_step(x[first:], y[first:], 0.1)[0] for _ in range(2)]
            return losses, model.params

        def in_process(first, queue):
            queue.put(fine_tune(first))

        if __name__ == "__main__":
            fork = multiprocessing.get_context("fork")
            with fork.Pool(2) as pool:
                results = pool.map(fine_tune, [0, 1])
            queue = fork.Queue()
            child = fork.Process(target=in_process, args=(2, queue))
            child.start()
            results.append(queue.get(timeout=100))
            child.join()
            changed = [k for k in start if not np.array_equal(start[k], model.params[k])]
            assert not changed, f"the children changed the parent's {changed}"
            for first, (losses, params) in enumerate(results):
                again = NumpyModel("cnn", start, threads=2)  # the same fine-tuning, here
                assert losses == [again.train_step(x[first:], y[first:], 0.1)[0] for _ in range(2)], first
                assert all(np.array_equal(params[k], again.params[k]) for k in params), first
            model.train_step(x, y, 0.1)  # the parent's workers still serve it
            assert model.network._owner == (os.getpid(), 0)
            print(json.dumps([losses for losses, _ in results]))
    """)
    out, _ = _finish(_python(script))
    losses = json.loads(out)
    assert len({tuple(run) for run in losses}) == 3  # three fine-tunings, not one raced on


def test_a_forked_child_of_a_parent_without_workers_trains(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import multiprocessing
        from twinnet.numpy_nn.fast import fast_network
        fast_network._use_processes = False  # as after a worker failed
        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        model.train_step(x, y, 0.1)
        assert model.network._shared is None  # the parts ran in this process

        def step(_):
            return model.train_step(x, y, 0.1)

        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(1) as pool:
                in_pool = pool.map_async(step, [0]).get(timeout=60)[0]
            child = os.fork()
            if child == 0:
                step(0)
                os._exit(0)
            _, status = os.waitpid(child, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert in_pool == step(0)  # what the parent computes from the same state
            print("ok")
    """)
    out, _ = _finish(_python(script), timeout=100)
    assert out.strip() == "ok"


def test_a_bare_fork_child_leaves_the_parents_workers_alone(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import logging
        logging.basicConfig(level=logging.WARNING)

        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        twin = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        for m in (model, twin):
            m.train_step(x, y, 0.1)
        pids = [w.process.pid for w in workers._workers]
        child = os.fork()
        if child == 0:
            model.train_step(x, y, 0.1)  # on workers of its own
            assert workers._workers and [w.process.pid for w in workers._workers] != pids
            sys.exit(0)  # a normal exit: atexit and finalizers run
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [w.process.pid for w in workers._workers] == pids
        assert all(w.process.poll() is None for w in workers._workers)
        steps = [m.train_step(x, y, 0.1) for m in (model, twin)]
        assert steps[0] == steps[1]  # the child's training changed nothing here
        assert all(np.array_equal(model.params[k], twin.params[k]) for k in model.params)
        assert workers.generation() == 0 and model.network._owner == (os.getpid(), 0)
        print(json.dumps(pids))
    """)
    out, _ = _finish(_python(script))
    assert all(not _alive(pid) for pid in json.loads(out))


def test_ctrl_c_ends_a_wait_for_a_stopped_worker(tmp_path: Path) -> None:
    # REPLY_SECONDS is 600 here: only Ctrl-C can end the wait within the test's time.
    script = _script(tmp_path, """
        import signal, threading
        workers.REPLY_SECONDS = 600
        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        model.train_step(x, y, 0.1)
        stopped = workers._workers[0].process
        os.kill(stopped.pid, signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # as Ctrl-C would
        try:
            model.train_step(x, y, 0.1)
        except KeyboardInterrupt:
            print("interrupted")
        assert stopped.poll() is not None  # killed with the other workers
        model.train_step(x, y, 0.1)  # on new workers
        assert model.network._shared is not None and workers._workers[0].process.pid != stopped.pid
        print(stopped.pid)
    """)
    out, _ = _finish(_python(script))
    assert out.split()[0] == "interrupted" and not _alive(int(out.split()[1]))


def test_workers_exit_with_their_parent_while_a_forked_child_lives(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import time
        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        model.train_step(x, y, 0.1)
        child = os.fork()
        if child == 0:
            time.sleep(600)
            os._exit(0)
        print(json.dumps({"pids": [w.process.pid for w in workers._workers], "child": child}), flush=True)
        time.sleep(600)
    """)
    process = _python(script)
    started = {"child": None}
    try:
        started = json.loads(process.stdout.readline())
        assert started["pids"]
        process.kill()
        process.wait()
        assert _alive(started["child"])
        assert _wait_until(lambda: not any(_alive(pid) for pid in started["pids"])), "an orphaned worker"
    finally:
        process.kill()
        if started["child"]:
            os.kill(started["child"], signal.SIGKILL)


def _wait_until(condition, seconds: float = 15) -> bool:
    """Poll ``condition()`` every 0.1 s for up to ``seconds``; whether it became true."""
    stop = threading.Event()
    for _ in range(int(seconds * 10)):
        if condition():
            return True
        stop.wait(0.1)
    return condition()


LEAK_PROBE = """
    names = []
    created = workers.SharedArrays.__init__

    def recording(self, *args, **kwargs):
        created(self, *args, **kwargs)
        if kwargs.get("name") is None:
            names.append(self.name)

    workers.SharedArrays.__init__ = recording
    model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
"""


def test_a_run_that_ends_leaves_no_worker_and_no_shared_memory(tmp_path: Path) -> None:
    script = _script(tmp_path, textwrap.dedent(LEAK_PROBE) + textwrap.dedent("""
        model.train_step(x, y, 0.1)
        model.logits(x)
        print(json.dumps({"pids": [w.process.pid for w in workers._workers], "shm": names}))
    """))
    out, err = _finish(_python(script))
    started = json.loads(out)
    assert started["pids"] and started["shm"]
    assert _wait_until(lambda: not any(_alive(pid) for pid in started["pids"]), 5)
    assert not any(Path("/dev/shm", name).exists() for name in started["shm"])
    assert "leaked" not in err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("when", ["after a step", "while registering"])
def test_a_killed_parent_leaves_no_worker_and_no_shared_memory(tmp_path: Path, sig: int, when: str) -> None:
    hold = """
        import time
        if WHEN == "while registering":  # killed between creating the block and unlinking it
            taking = workers.Worker.receive

            def held(self, *args, **kwargs):
                reply = taking(self, *args, **kwargs)
                report()
                time.sleep(600)

            workers.Worker.receive = held

        def report():
            print(json.dumps({"pids": [w.process.pid for w in workers._workers], "shm": names}), flush=True)

        model.train_step(x, y, 0.1)
        report()
        time.sleep(600)
    """
    script = _script(tmp_path, f"WHEN = {when!r}\n" + textwrap.dedent(LEAK_PROBE) + textwrap.dedent(hold))
    process = _python(script)
    try:
        started = json.loads(process.stdout.readline())
        assert started["pids"] and started["shm"], process.stderr.read()
        if when == "while registering":
            assert all(Path("/dev/shm", name).exists() for name in started["shm"])
        process.send_signal(sig)
        _, err = process.communicate(timeout=30)  # the pipes close once every worker is gone
    finally:
        process.kill()
    assert _wait_until(lambda: not any(_alive(pid) for pid in started["pids"]))
    assert _wait_until(lambda: not any(Path("/dev/shm", name).exists() for name in started["shm"]))
    if when == "after a step":
        assert not err  # no BrokenPipeError traceback, no "leaked semaphore" line
    else:  # the standard library's resource tracker unlinked the block, and says so
        assert all("resource_tracker" in line for line in err.splitlines() if "warn" in line), err
        assert "Traceback" not in err and "BrokenPipeError" not in err and "semaphore" not in err, err


def test_a_random_py_in_the_working_directory_stays_out_of_the_workers(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "random.py").write_text("raise ImportError('the working directory was imported from')\n")
    script = _script(tmp_path / "app", """
        import logging
        logging.basicConfig(level=logging.WARNING)
        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        model.train_step(x, y, 0.1)
        assert model.network._shared is not None and fast_network._use_processes
        print("ok")
    """)
    out, _ = _finish(_python(script, cwd=work))
    assert out.strip() == "ok"


def test_an_unguarded_script_runs_its_top_level_once(tmp_path: Path) -> None:
    # No `if __name__ == "__main__":`, as in many a notebook exported to a script.
    marker = tmp_path / "runs.txt"
    script = _script(tmp_path, f"""
        import logging
        logging.basicConfig(level=logging.WARNING)
        with open({str(marker)!r}, "a") as runs:
            runs.write(f"{{os.getpid()}}\\n")
        model = NumpyModel("cnn", init_params("cnn", 1), threads=2)
        model.train_step(x, y, 0.1)
        assert model.network._shared is not None and fast_network._use_processes
        print("ok")
    """)
    out, _ = _finish(_python(script))
    assert out.strip() == "ok"
    assert len(marker.read_text().split()) == 1


@pytest.mark.parametrize("name", NAMED_MODELS)
def test_every_model_with_a_conv_splits_over_the_cores(name: str) -> None:
    # Whichever block its convs became: LeNet-5's FastConv2D once kept it on one core.
    has_conv = any(isinstance(layer, models.Conv2DSpec) for layer in models.get_spec(name))
    network = fast_network.FastNetwork(name, init_params(name, 0), threads=2)
    assert network.parts == (2 if has_conv else 1)


# Every activation and a batch norm after a conv, and first a flatten whose output is the
# caller's images: nothing may infer in place there.
IN_PLACE_SPEC = {"layers": [
    {"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2},  # 14x14x4
    {"type": "batchnorm"}, {"type": "leaky_relu", "alpha": 0.1}, {"type": "tanh"},
    {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "valid"}, {"type": "sigmoid"},
    {"type": "leaky_relu", "alpha": 0.7}, {"type": "relu"}, {"type": "flatten"},
    {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 10},
]}


@pytest.mark.parametrize("first", [[], [{"type": "flatten"}, {"type": "tanh"},
                                        {"type": "dropout", "rate": 0.1}, {"type": "relu"}]])
def test_activations_and_batch_norm_infer_in_place_as_they_would_into_a_new_array(first: list) -> None:
    layers_ = first + ([{"type": "dense", "units": 10}] if first else IN_PLACE_SPEC["layers"])
    spec = models.parse_spec({"layers": layers_}, "in_place.toml")
    params = init_params(spec, 4)
    for key in params:
        if "moving" in key or key.endswith("/beta"):
            params[key] += np.float32(0.3)
    fused = fuse(spec, build_layers(spec, params))
    flags = [layer.in_place for layer in fused if hasattr(layer, "in_place")]
    assert flags == ([False, True] if first else [True] * 6)  # the tanh made the relu's input
    if not first:  # the batch norm right after the first conv: folded into it at inference
        assert fused[0].bn is fused[1].layer and fused[1].folded
    x = np.random.default_rng(5).standard_normal((9, 28, 28, 1)).astype(np.float32)
    kept = x.copy()
    in_place = Network(fused).logits(x)
    np.testing.assert_array_equal(x, kept)  # the caller's images are untouched
    for layer in fused:
        if hasattr(layer, "in_place"):
            layer.in_place = False
    np.testing.assert_array_equal(in_place, Network(fused).logits(x))
    np.testing.assert_allclose(in_place, Network(build_layers(spec, params)).logits(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_first_conv_takes_images_whose_channel_axis_was_added_by_indexing(padding: str) -> None:
    # x[..., None] gives the channel axis a stride of 0: contiguous all the same.
    layers_ = [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": padding}, {"type": "tanh"},
               {"type": "flatten"}, {"type": "dense", "units": 10}]
    spec = models.parse_spec({"layers": layers_}, "first.toml")
    params = _float64(spec, 2)
    images = np.random.default_rng(7).random((5, 28, 28))[..., None]
    fast = NumpyModel(spec, params, dtype=np.float64, threads=1)
    reference = NumpyModel(spec, params, dtype=np.float64, fast=False)
    np.testing.assert_allclose(fast.logits(images), reference.logits(images), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.loss_and_grads(images, np.arange(5))[0],
                               reference.loss_and_grads(images, np.arange(5))[0], rtol=1e-10)
