"""The NumPy twin's reference layers: one class per section of docs/derivations.md.

Every layer is a forward/backward pair:

- ``forward(x, train=True)`` returns the output; in training it keeps in ``cache``
  exactly what ``backward`` needs (inference, ``train=False``, keeps nothing);
- ``backward(d)`` takes d(loss)/d(output) of the last training forward and returns
  d(loss)/d(input); a layer with parameters also fills ``grads`` with the gradient of
  each, under its canonical name (``"conv1/W"``), as ``params`` names the arrays.

Arrays are NHWC images (N, H, W, C) or (N, features), in the dtype they arrive in
(float32 in training, float64 in gradient checks). Parameters are held by reference,
so an optimizer's in-place update is seen by the layer. These layers train any model
on their own (``network.py``); ``fast/`` holds faster blocks that replace some runs of
them, each tested equal to the layers it replaces.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NoParams:
    """Base of the layers without parameters: nothing to learn, no gradients to give."""

    params: dict[str, np.ndarray] = {}
    grads: dict[str, np.ndarray] = {}


def affine_grads(name: str, inputs: np.ndarray, dz: np.ndarray, w_shape: tuple[int, ...],
                 sum_rows: Callable[[np.ndarray], np.ndarray] | None = None,
                 gram: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The parameter gradients of an affine map ``z = inputs @ W + b`` (a dense layer, or a
    conv with inputs its im2col matrix): dW = inputs.T @ dz reshaped to ``w_shape``, db =
    the sum of dz's rows. inputs (M, n_in), dz (M, n_out). ``sum_rows`` and ``gram`` may
    give the sum and the product in another form (the engine's); by default
    ``dz.sum(axis=0)`` and ``inputs.T @ dz``."""
    db = dz.sum(axis=0) if sum_rows is None else sum_rows(dz)
    dW = inputs.T @ dz if gram is None else gram(inputs, dz)
    return {f"{name}/W": dW.reshape(w_shape), f"{name}/b": db}


def output_size(size: int, kernel: int, stride: int) -> int:
    """How many windows of ``kernel`` pixels, one every ``stride``, fit in ``size`` pixels."""
    return (size - kernel) // stride + 1


class Dense:
    """Affine layer ``z = x @ W + b`` (derivations, section 2).

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), z (N, n_out).
    Backward: dx = dz @ W.T, dW = x.T @ dz, db = dz summed over N.
    """

    def __init__(self, name: str, W: np.ndarray, b: np.ndarray) -> None:
        self.name, self.W, self.b = name, W, b
        self.params = {f"{name}/W": W, f"{name}/b": b}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache = x
        return x @ self.W + self.b

    def backward(self, dz: np.ndarray) -> np.ndarray:
        self.grads = affine_grads(self.name, self.cache, dz, self.W.shape)
        return dz @ self.W.T


class ReLU(NoParams):
    """``max(x, 0)`` elementwise, any shape (derivations, section 3).

    Backward: dx = d where x > 0, else 0 (the subgradient at 0 is taken as 0, as
    TensorFlow does).
    """

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache = x > 0
        return np.maximum(x, 0)

    def backward(self, d: np.ndarray) -> np.ndarray:
        return d * self.cache


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Zeros before and after one axis of ``size`` pixels for 'same' output ceil(size /
    stride), as TensorFlow pads: the odd one goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def tap(x: np.ndarray, p: int, q: int, stride: int, h_out: int, w_out: int) -> np.ndarray:
    """Element (p, q) of every window of x (N, H, W, C), windows every ``stride`` pixels:
    a strided view (N, h_out, w_out, C) with ``[n, i, j] = x[n, i*stride + p, j*stride + q]``."""
    return x[:, p:p + stride * h_out:stride, q:q + stride * w_out:stride]


def windows(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Every size x size window of x (N, H, W, C) every ``stride`` pixels, as a view
    (N, H_out, W_out, size, size, C) with ``[n, i, j, p, q, c] = x[n, i*stride + p, j*stride + q, c]``."""
    view = sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    return view.transpose(0, 1, 2, 4, 5, 3)


def scatter_windows(d_windows: np.ndarray, shape: tuple[int, ...], stride: int) -> np.ndarray:
    """The adjoint of ``windows``: d_windows (N, H_out, W_out, size, size, C) added back
    onto the pixels they were read from, an array of ``shape`` (N, H, W, C). A loop over
    the size x size window positions, each one strided add of the whole batch."""
    _, h_out, w_out, size, _, _ = d_windows.shape
    dx = np.zeros(shape, dtype=d_windows.dtype)
    for p in range(size):
        for q in range(size):
            tap(dx, p, q, stride, h_out, w_out)[...] += d_windows[:, :, :, p, q]
    return dx


class Conv2D:
    """Cross-correlation, NHWC images and an HWIO kernel (derivations, section 4).

    Shapes: x (N, H, W, C_in), W (k, k, C_in, C_out), b (C_out,), z (N, H_out, W_out, C_out):
    ``z[n, i, j, o] = b[o] + sum_{p, q, c} xpad[n, i*s + p, j*s + q, c] * W[p, q, c, o]``,
    xpad being x with 'same' zero padding (or none for 'valid'), s the stride.

    Forward as one matmul of the im2col matrix (one row per output pixel, its window's
    k*k*C_in values in (p, q, c) order) with the kernel reshaped to (k*k*C_in, C_out).
    Backward: dW = cols.T @ dz, db = dz summed over N, H, W, and dx = the gradient of
    each window's values, dz @ W.T, added back where each value was read (``scatter_windows``).
    """

    def __init__(self, name: str, W: np.ndarray, b: np.ndarray, stride: int = 1,
                 padding: str = "same") -> None:
        self.name, self.W, self.b, self.stride, self.padding = name, W, b, stride, padding
        self.params = {f"{name}/W": W, f"{name}/b": b}
        self.grads: dict[str, np.ndarray] = {}

    def pad(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """x (N, H, W, C) with its zero padding ('same': as TensorFlow pads; 'valid': none),
        and the (top, left) offset of x inside it."""
        if self.padding == "valid":
            return x, (0, 0)
        k = self.W.shape[0]
        rows, cols = same_padding(x.shape[1], k, self.stride), same_padding(x.shape[2], k, self.stride)
        return np.pad(x, ((0, 0), rows, cols, (0, 0))), (rows[0], cols[0])

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        k, _, c_in, c_out = self.W.shape
        xpad, (top, left) = self.pad(x)
        win = windows(xpad, k, self.stride)  # (N, H_out, W_out, k, k, C_in)
        n, h_out, w_out = win.shape[:3]
        cols = win.reshape(n * h_out * w_out, k * k * c_in)  # the im2col matrix (a copy)
        if train:
            self.cache = (cols, win.shape, xpad.shape, x.shape, top, left)
        z = cols @ self.W.reshape(k * k * c_in, c_out) + self.b
        return z.reshape(n, h_out, w_out, c_out)

    def backward(self, dz: np.ndarray) -> np.ndarray:
        cols, win_shape, xpad_shape, (_, h, w, _), top, left = self.cache
        c_out = self.W.shape[3]
        dz2d = dz.reshape(-1, c_out)
        self.grads = affine_grads(self.name, cols, dz2d, self.W.shape)
        dcols = dz2d @ self.W.reshape(-1, c_out).T  # d(loss)/d(each window value)
        dxpad = scatter_windows(dcols.reshape(win_shape), xpad_shape, self.stride)
        return dxpad[:, top:top + h, left:left + w]


class MaxPool2D(NoParams):
    """Maximum over each size x size window every ``stride`` pixels, no padding
    (derivations, section 5).

    Shapes: x (N, H, W, C) -> out (N, H_out, W_out, C), H_out = (H - size) // stride + 1.
    Computed as the running maximum of the window's size*size elements (``tap``).
    Backward: each window's gradient goes to the element that was its maximum; on ties
    to the first in row-major window order, so a window passes on exactly its gradient.
    """

    def __init__(self, size: int = 2, stride: int = 2) -> None:
        self.size, self.stride = size, stride

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        h_out, w_out = (output_size(size, self.size, self.stride) for size in x.shape[1:3])
        taps = [tap(x, p, q, self.stride, h_out, w_out) for p in range(self.size) for q in range(self.size)]
        out = taps[0].copy()
        for t in taps[1:]:
            np.maximum(out, t, out=out)
        if train:
            # routing[k]: where element k of the window is the first maximum.
            routing, taken = [], np.zeros(out.shape, dtype=bool)
            for t in taps:
                routing.append((t == out) & ~taken)
                taken |= routing[-1]
            self.cache = (np.stack(routing), x.shape)
        return out

    @property
    def routing(self) -> np.ndarray:
        """The last training forward's arg-max masks (size*size, N, H_out, W_out, C), bool:
        where each window's gradient goes (what gradient checks watch for kinks)."""
        return self.cache[0]

    def backward(self, d: np.ndarray) -> np.ndarray:
        routing, shape = self.cache
        dx = np.zeros(shape, dtype=d.dtype)
        h_out, w_out = d.shape[1:3]
        for k, route in enumerate(routing):
            p, q = divmod(k, self.size)
            tap(dx, p, q, self.stride, h_out, w_out)[...] += d * route
        return dx


class AvgPool2D(NoParams):
    """Mean over each size x size window every ``stride`` pixels, no padding
    (derivations, section 8).

    Shapes: x (N, H, W, C) -> out (N, H_out, W_out, C), H_out = (H - size) // stride + 1.
    Backward: each element of a window gets d / size**2 of the window's gradient, added
    up where windows overlap (``scatter_windows``).
    """

    def __init__(self, size: int = 2, stride: int = 2) -> None:
        self.size, self.stride = size, stride

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache = x.shape
        return windows(x, self.size, self.stride).mean(axis=(3, 4))

    def backward(self, d: np.ndarray) -> np.ndarray:
        n, h_out, w_out, c = d.shape
        share = np.broadcast_to((d / self.size**2)[:, :, :, None, None],
                                (n, h_out, w_out, self.size, self.size, c))
        return scatter_windows(share, self.cache, self.stride)


class Flatten(NoParams):
    """Row-major flatten, x (N, d1, d2, ...) -> (N, d1*d2*...) (derivations, section 6).

    Backward reshapes the gradient back to the input's shape.
    """

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache = x.shape
        return x.reshape(len(x), -1)

    def backward(self, d: np.ndarray) -> np.ndarray:
        return d.reshape(self.cache)


Layer = Dense | ReLU | Conv2D | MaxPool2D | AvgPool2D | Flatten
