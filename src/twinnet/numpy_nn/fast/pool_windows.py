"""``ConvReLUPool``'s inference form: matmul rows per pooling window, not per pixel.

A 2x2 pooling window over a 3x3 'same' conv reads one 4x4 patch of the padded input:
window (i, j) pools conv outputs (2i + a, 2j + b), a, b in {0, 1}, and output row a
reads patch rows a..a+2. So with one row of the patch matrix per window (its 16*C
values), the matrix's columns of patch rows 0-2 and of rows 1-3, each times
``pixel_rows.row_kernel(W, 2)`` (W at both column offsets b, zeros elsewhere), give a
window's four conv outputs; the pool is their maximum, then the bias and the ReLU, as in
the training form (max(z) + b = max(z + b)). Why it is faster: docs/performance.md,
"Inference by pooling windows". The values are the reference layers' (a zero term
leaves a sum unchanged; an infinite input gives NaN here: zero times infinity).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from twinnet.numpy_nn.fast import budgets
from twinnet.numpy_nn.fast.pixel_rows import row_kernel
from twinnet.numpy_nn.fast.primitives import tap_major_windows
from twinnet.util import chunk_slices


class WindowPlan:
    """The work arrays for chunks of shape (k, H, W, C), made once: the padded images, a
    strided view of their 4x4 patches, the patch matrix the view is copied into, and the
    products (2, windows, 2*C_out) of its two halves, patch rows 0-2 (a = 0) and 1-3
    (a = 1), windows = k*H/2*W/2. The matrix is (windows, 16*C), or for C = 1 tap-major
    (16, windows) (as ``primitives.im2col_rows``). The pool takes the maximum over a of
    the two whole products, then over b of each pair of adjacent columns."""

    def __init__(self, shape: tuple[int, int, int, int], c_out: int, dtype: np.dtype) -> None:
        k, h, w, c = shape
        windows = k * (h // 2) * (w // 2)
        xpad = np.zeros((k, h + 2, w + 2, c), dtype=dtype)
        self.interior = xpad[:, 1:-1, 1:-1]
        s_n, s_h, s_w, s_c = xpad.strides
        if c == 1:  # patches[p, q, n, i, j] = xpad[n, 2i + p, 2j + q, 0]
            self.patches = tap_major_windows(xpad, 4, 2)
            self.matrix = np.empty((16, windows), dtype=dtype)
            self.halves = (self.matrix[:12].T, self.matrix[4:].T)
        else:  # patches[n, i, j, p, q*C + c] = xpad[n, 2i + p, 2j + q, c]
            self.patches = as_strided(xpad, shape=(k, h // 2, w // 2, 4, 4 * c),
                                      strides=(s_n, 2 * s_h, 2 * s_w, s_h, s_c), writeable=False)
            self.matrix = np.empty((windows, 16 * c), dtype=dtype)
            self.halves = (self.matrix[:, :12 * c], self.matrix[:, 4 * c:])
        self.products = np.empty((2, windows, 2 * c_out), dtype=dtype)
        self.target = self.matrix.reshape(self.patches.shape)
        flat = self.products[0].reshape(-1)
        self.columns = (flat[0::2], flat[1::2])  # b = 0, 1: columns in (o, b) order
        self.pooled_shape = (windows * c_out,)
        self.zeros = np.zeros((1, windows // k * c_out), dtype=dtype)  # one image's row

    def run(self, x: np.ndarray, kernel: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out (k, H/2, W/2, C_out) = relu(maxpool(conv(x)) + b) for x (k, H, W, C);
        ``kernel`` is ``row_kernel(W, 2)`` with its columns in (o, b) order (the pool over b
        is then one pass over pairs), and b is tiled over one image's output row."""
        self.interior[...] = x
        np.copyto(self.target, self.patches)
        first, second = self.products
        np.matmul(self.halves[0], kernel, out=first)
        np.matmul(self.halves[1], kernel, out=second)
        np.maximum(first, second, out=first)  # over a: two whole arrays
        np.maximum(*self.columns, out=out.reshape(self.pooled_shape))  # over b
        rows = out.reshape(len(out), -1)  # one per image (as primitives.add_bias and relu)
        np.add(rows, b, out=rows)
        np.maximum(rows, self.zeros, out=rows)


class WindowInference:
    """``relu(maxpool(conv(x) + b))`` of a 3x3 'same' conv and a 2x2 max-pool, by
    pooling windows: x (N, H, W, C), H and W even, W (3, 3, C, C_out), b (C_out,) ->
    (N, H/2, W/2, C_out). Runs the batch in chunks of INFERENCE_CHUNK_BYTES, keeping the
    work arrays of the last KEPT_PLANS chunk shapes it met."""

    def __init__(self) -> None:
        self._plans: dict[tuple, WindowPlan] = {}  # in the order they were made

    def __call__(self, x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        c_out = W.shape[3]
        kernel = row_kernel(W.astype(x.dtype, copy=False), 2)
        kernel = np.ascontiguousarray(kernel.reshape(-1, 2, c_out).transpose(0, 2, 1)).reshape(-1, 2 * c_out)
        b = np.tile(b.astype(x.dtype, copy=False), (h // 2) * (w // 2))  # see primitives.add_bias
        per_image = (h // 2) * (w // 2) * (16 * c + 4 * c_out) * x.dtype.itemsize
        out = np.empty((n, h // 2, w // 2, c_out), dtype=x.dtype)
        for part in chunk_slices(n, max(1, budgets.INFERENCE_CHUNK_BYTES // per_image)):
            chunk = x[part]
            key = (chunk.shape, c_out, x.dtype)
            plan = self._plans.get(key) or self._new_plan(key)
            plan.run(chunk, kernel, b, out[part])
        return out

    def _new_plan(self, key: tuple) -> WindowPlan:
        """A plan for ``key`` (chunk shape, C_out, dtype), forgetting the oldest beyond
        KEPT_PLANS."""
        self._plans[key] = plan = WindowPlan(*key)
        while len(self._plans) > budgets.KEPT_PLANS:
            del self._plans[next(iter(self._plans))]
        return plan
