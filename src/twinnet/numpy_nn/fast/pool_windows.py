"""The inference form of conv -> activation -> 2x2 pool: one matmul row per pooling window,
whose (k+1) x (k+1) patch of the padded input holds all four of the window's conv outputs
(patch rows 0..k-1 give its top row, rows 1..k its bottom row). The maths, and why it is
faster: docs/performance.md, "The fused block" and "Inference by pooling windows"."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

from twinnet.numpy_nn.fast import budgets
from twinnet.numpy_nn.fast.primitives import matmul_by_images, row_kernel, tap_major_windows
from twinnet.util import chunk_slices


def window_grid(h: int, w: int, k: int, pad: int) -> tuple[int, int]:
    """The pooling windows down and across, (H_out // 2, W_out // 2), over a k x k stride-1
    conv of an h x w image padded by ``pad`` on every side."""
    return (h + 2 * pad - k + 1) // 2, (w + 2 * pad - k + 1) // 2


class WindowPlan:
    """The work arrays for chunks of shape (n, H, W, C) of a k x k conv padded by ``pad``
    on every side, made once: the padded images, a strided view of their (k+1) x (k+1)
    patches, the patch matrix the view is copied into, and the products (2, windows,
    2*C_out) of its two halves, patch rows 0..k-1 (a = 0) and 1..k (a = 1), windows =
    n * (H_out // 2) * (W_out // 2). The matrix is (windows, (k+1)**2 * C), or for C = 1
    tap-major (as ``primitives.im2col_rows``); a product's columns are in (o, b) order."""

    def __init__(self, shape: tuple[int, int, int, int], k: int, pad: int, c_out: int,
                 dtype: np.dtype) -> None:
        n, h, w, c = shape
        xpad = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=dtype)
        self.interior = xpad[:, pad:pad + h, pad:pad + w]
        s_n, s_h, s_w, s_c = xpad.strides
        p = k + 1
        if c == 1:  # patches[p, q, n, i, j] = xpad[n, 2i + p, 2j + q, 0]
            self.patches = tap_major_windows(xpad, p, 2)
            self.matrix = np.empty((p * p, math.prod(self.patches.shape[2:])), dtype=dtype)
            self.halves = (self.matrix[:k * p].T, self.matrix[p:].T)
        else:  # patches[n, i, j, p, q*C + c] = xpad[n, 2i + p, 2j + q, c]
            rows, cols = window_grid(h, w, k, pad)
            self.patches = as_strided(xpad, shape=(n, rows, cols, p, p * c),
                                      strides=(s_n, 2 * s_h, 2 * s_w, s_h, s_c), writeable=False)
            self.matrix = np.empty((n * rows * cols, p * p * c), dtype=dtype)
            self.halves = (self.matrix[:, :k * p * c], self.matrix[:, p * c:])
        self.target = self.matrix.reshape(self.patches.shape)
        self.products = np.empty((2, len(self.halves[0]), 2 * c_out), dtype=dtype)

    def run(self, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """The products (2, windows, 2*C_out) of x (n, H, W, C); ``kernel``: row_kernel(W, 2), (o, b)."""
        self.interior[...] = x
        np.copyto(self.target, self.patches)
        matmul_by_images(self.halves[0], kernel, self.products[0], len(x))
        matmul_by_images(self.halves[1], kernel, self.products[1], len(x))
        return self.products


class WindowInference:
    """``pool(act(conv(x) + b))`` of a k x k stride-1 conv padded by ``pad``, an
    elementwise activation ``act`` (in place; monotone for a max-pool) and a 2x2 pool of
    stride 2 (``mean``: average, else max), by pooling windows: x (N, H, W, C), W (k, k,
    C, C_out), b (C_out,) -> (N, H_out // 2, W_out // 2, C_out). Runs the batch in chunks
    of INFERENCE_CHUNK_BYTES, keeping the work arrays of the last KEPT_PLANS chunk shapes."""

    def __init__(self) -> None:
        self.plan = lru_cache(maxsize=budgets.KEPT_PLANS)(WindowPlan)  # (chunk shape, k, pad, C_out, dtype)

    def __call__(self, x: np.ndarray, W: np.ndarray, b: np.ndarray, pad: int,
                 act: Callable[[np.ndarray], object], mean: bool) -> np.ndarray:
        n, h, w, c = x.shape
        k, c_out = W.shape[0], W.shape[3]
        kernel = row_kernel(W.astype(x.dtype, copy=False), 2)
        kernel = np.ascontiguousarray(kernel.reshape(-1, 2, c_out).transpose(0, 2, 1)).reshape(-1, 2 * c_out)
        rows, cols = window_grid(h, w, k, pad)
        b = b.astype(x.dtype, copy=False)  # tiled over one image's row, as primitives.add_bias
        b = np.tile(np.repeat(b, 2), rows * cols) if mean else np.tile(b, rows * cols)
        per_image = rows * cols * ((k + 1) ** 2 * c + 4 * c_out) * x.dtype.itemsize
        out = np.empty((n, rows, cols, c_out), dtype=x.dtype)
        for part in chunk_slices(n, max(1, budgets.INFERENCE_CHUNK_BYTES // per_image)):
            chunk = x[part]
            first, second = products = self.plan(chunk.shape, k, pad, c_out, x.dtype).run(chunk, kernel)
            combine, pooled = (np.add if mean else np.maximum), out[part].reshape(-1)
            rows_of = (products if mean else pooled).reshape(-1, len(b))  # one image's row each
            if mean:  # the bias and the activation on every conv output, then the mean
                rows_of += b
                act(rows_of)
            combine(first, second, out=first)
            flat = first.reshape(-1)
            combine(flat[0::2], flat[1::2], out=pooled)  # over b: adjacent columns
            if mean:
                pooled *= 0.25
            else:  # a monotone activation after the maximum
                rows_of += b
                act(rows_of)
        return out
