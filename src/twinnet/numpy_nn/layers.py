"""Reference layers of the NumPy twin: one plain class per section of docs/derivations.md.

Each layer is a forward/backward pair (cs231n style):

- ``forward(x)`` returns the output and keeps in ``cache`` exactly what ``backward``
  needs;
- ``backward(dout)`` takes d(loss)/d(output) and returns d(loss)/d(input); a layer
  with parameters also fills ``grads = {"W": dW, "b": db}``.

Every array is NHWC (images) or (N, features), in the dtype it arrives in (float32 in
training, float64 in gradient checks). Parameters are held by reference, so an
optimizer that updates them in place is seen by the layer.

These classes are written to be read next to their derivations, not to be fast: the
network trains with the fused blocks of ``blocks.py``, built from the measured
kernels of ``kernels.py``, and a test holds each block equal to the composition of
these layers.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Dense:
    """Affine layer ``z = x @ W + b`` (derivations, section 2).

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), z (N, n_out).
    Backward: dx = dz @ W.T, dW = x.T @ dz, db = dz summed over N.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W, self.b = W, b
        self.cache: np.ndarray | None = None
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.cache = x
        return x @ self.W + self.b

    def backward(self, dz: np.ndarray) -> np.ndarray:
        x = self.cache
        self.grads = {"W": x.T @ dz, "b": dz.sum(axis=0)}
        return dz @ self.W.T


class ReLU:
    """Elementwise ``max(x, 0)``, any shape (derivations, section 3).

    Backward: dx = dout where x > 0, else 0 (the subgradient at 0 is taken as 0, as
    TensorFlow does).
    """

    def __init__(self) -> None:
        self.cache: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.cache = x > 0
        return np.maximum(x, 0)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.cache


def im2col_3x3(xpad: np.ndarray) -> np.ndarray:
    """All 3x3 windows of a zero-padded NHWC batch as the rows of one matrix.

    xpad (N, H+2, W+2, C) -> cols (N*H*W, 9*C) with
    ``cols[(n*H + i)*W + j, (p*3 + q)*C + c] = xpad[n, i + p, j + q, c]``: one row per
    output pixel, columns in (p, q, c) order, the row order of an HWIO kernel reshaped
    to (9*C, C_out).
    """
    windows = sliding_window_view(xpad, (3, 3), axis=(1, 2))  # (N, H, W, C, 3, 3), a view
    n, h, w, c = windows.shape[:4]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, 9 * c)


def pad1(x: np.ndarray) -> np.ndarray:
    """x (N, H, W, C) with one row and column of zeros on every side: (N, H+2, W+2, C)."""
    return np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


class Conv2D:
    """3x3 cross-correlation, stride 1, zero padding 1 ('same'), NHWC / HWIO
    (derivations, section 4).

    Shapes: x (N, H, W, C_in), W (3, 3, C_in, C_out), b (C_out,), z (N, H, W, C_out):
    ``z[n, i, j, o] = b[o] + sum_{p, q, c} xpad[n, i+p, j+q, c] * W[p, q, c, o]``.

    Forward as one matmul of the im2col matrix with the kernel. Backward:
    dW = cols.T @ dz, db = dz summed over N, H, W, and dx = the 'same' correlation of
    dz with the kernel flipped in both spatial axes and its channel axes swapped.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        if W.shape[:2] != (3, 3):
            raise ValueError(f"Conv2D supports 3x3 kernels only, got {W.shape[:2]}")
        self.W, self.b = W, b
        self.cache: tuple[np.ndarray, tuple[int, ...]] | None = None
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c_in = x.shape
        c_out = self.W.shape[3]
        cols = im2col_3x3(pad1(x))
        self.cache = (cols, x.shape)
        z = cols @ self.W.reshape(9 * c_in, c_out) + self.b
        return z.reshape(n, h, w, c_out)

    def backward(self, dz: np.ndarray) -> np.ndarray:
        cols, (n, h, w, c_in) = self.cache
        c_out = self.W.shape[3]
        dz2d = dz.reshape(n * h * w, c_out)
        self.grads = {"W": (cols.T @ dz2d).reshape(self.W.shape), "b": dz2d.sum(axis=0)}
        w_flip = self.W[::-1, ::-1].transpose(0, 1, 3, 2)  # W_flip[p, q, o, c] = W[2-p, 2-q, c, o]
        dx = im2col_3x3(pad1(dz)) @ w_flip.reshape(9 * c_out, c_in)
        return dx.reshape(n, h, w, c_in)


class MaxPool2D:
    """2x2 max-pooling, stride 2, H and W even (derivations, section 5).

    Shapes: x (N, H, W, C) -> out (N, H/2, W/2, C). Backward: each window's gradient
    goes to the element that was its maximum; on ties to the first one in row-major
    window order, so a window passes on exactly its gradient, never a multiple of it.
    """

    def __init__(self) -> None:
        self.cache: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"MaxPool2D needs even height and width, got {h}x{w}")
        # (N, H/2, W/2, C, 4): the four elements of each window, in row-major window order.
        windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
        windows = windows.reshape(n, h // 2, w // 2, c, 4)
        first_max = windows.argmax(axis=-1)  # argmax returns the first maximum
        self.cache = (first_max, x.shape)
        return windows.max(axis=-1)

    @property
    def routing(self) -> np.ndarray:
        """The last forward's arg-max masks, (N, H/2, W/2, C, 4) bool: where the
        gradient of each window goes (also what gradient checks watch for kinks)."""
        first_max, _ = self.cache
        return first_max[..., None] == np.arange(4)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        _, (n, h, w, c) = self.cache
        dwindows = dout[..., None] * self.routing  # (N, H/2, W/2, C, 4)
        dx = dwindows.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
        return dx.reshape(n, h, w, c)


class Flatten:
    """Row-major flatten, x (N, d1, d2, ...) -> (N, d1*d2*...) (derivations, section 6).

    Backward reshapes the gradient back to the input's shape.
    """

    def __init__(self) -> None:
        self.cache: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.cache)


Layer = Dense | ReLU | Conv2D | MaxPool2D | Flatten
