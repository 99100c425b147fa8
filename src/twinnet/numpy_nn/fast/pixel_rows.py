"""Matmul rows of several output pixels: the im2col of a conv with r adjacent output
pixels of an image row to a matrix row, multiplied by ``row_kernel`` (W at the r column
offsets, zeros elsewhere) into rows r*C_out wide. Why, and the cost of the multiply-adds
by zero: docs/performance.md, "Layers no fused block takes"."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from twinnet.numpy_nn.fast import budgets
from twinnet.numpy_nn.layers import output_size


def pixels_per_row(w_out: int, c_out: int, k: int, stride: int) -> int:
    """The r for a conv of w_out output columns, c_out channels, a k x k kernel and
    ``stride``: the smallest divisor of w_out with r * c_out >= PRODUCT_WIDTH, among
    those whose patch is at most MAX_PATCH_WIDTHS kernels wide (the largest of these if
    none is wide enough), so that at most 2/3 of the multiply-adds are by zero."""
    divisors = [r for r in range(1, w_out + 1)
                if w_out % r == 0 and (r - 1) * stride + k <= budgets.MAX_PATCH_WIDTHS * k]
    return next((r for r in divisors if r * c_out >= budgets.PRODUCT_WIDTH), divisors[-1])


def row_kernel(W: np.ndarray, r: int, stride: int = 1) -> np.ndarray:
    """W (k, k, C, C_out) HWIO -> (k * ((r-1)*stride + k) * C, r * C_out): row (p, q, c)
    and column (b, o) hold W[p, q - b*stride, c, o] where 0 <= q - b*stride < k, else 0."""
    k, _, c, c_out = W.shape
    kernel = np.zeros((k, (r - 1) * stride + k, c, r, c_out), dtype=W.dtype)
    for b in range(r):
        kernel[:, b * stride:b * stride + k, :, b] = W
    return kernel.reshape(-1, r * c_out)


def contiguous_strides(x: np.ndarray) -> tuple[int, ...]:
    """The strides of a C-contiguous x, from its shape (an axis of length 1 may carry any
    stride, e.g. the channel axis that ``x[..., None]`` adds); ValueError if x is not."""
    if not x.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous NHWC array, got strides {x.strides}")
    return tuple(x.itemsize * math.prod(x.shape[axis + 1:]) for axis in range(x.ndim))


def pixel_windows(xpad: np.ndarray, k: int, stride: int, r: int) -> np.ndarray:
    """xpad (N, Hp, Wp, C) C-contiguous, already padded -> a view (N, H_out, W_out/r, k,
    ((r-1)*stride + k) * C): [n, i, j, p] is row p of the patch that output pixels (i, j*r)
    to (i, j*r + r-1) read, its (q, c) values contiguous. W_out must be a multiple of r."""
    n, hp, wp, c = xpad.shape
    s_n, s_h, s_w, s_c = contiguous_strides(xpad)
    h_out, w_out = (output_size(size, k, stride) for size in (hp, wp))
    return as_strided(xpad, shape=(n, h_out, w_out // r, k, ((r - 1) * stride + k) * c),
                      strides=(s_n, s_h * stride, s_w * stride * r, s_h, s_c), writeable=False)


def pixel_rows(xpad: np.ndarray, k: int, stride: int, r: int) -> np.ndarray:
    """``pixel_windows`` copied into a matrix (N * H_out * W_out/r, k * ((r-1)*stride + k)
    * C): row (n, i, j) is the patch that output pixels (i, j*r) to (i, j*r + r-1) read,
    in (p, q, c) order. For C = 1 with runs of W_out/r values longer than a patch row, it
    is copied tap-major and returned as its transpose (``primitives.im2col_rows``)."""
    windows = pixel_windows(xpad, k, stride, r)
    width = math.prod(windows.shape[3:])
    if xpad.shape[3] == 1 and windows.shape[2] > windows.shape[4]:  # copy the longer runs
        return np.ascontiguousarray(windows.transpose(3, 4, 0, 1, 2)).reshape(width, -1).T
    return np.ascontiguousarray(windows).reshape(-1, width)
