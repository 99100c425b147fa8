"""Primitives for the engine's blocks: each computes what a reference layer also computes,
in a form NumPy runs faster; its docstring says what and why (docs/performance.md, "Kernels")."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from twinnet.numpy_nn.fast import budgets
from twinnet.numpy_nn.layers import output_size
from twinnet.util import chunk_slices


def per_image_rows(x: np.ndarray) -> np.ndarray:
    """A C-contiguous x (N, ...) as a 2-D view with one image per row (NumPy's inner loop
    then runs an image long; a copy would lose an in-place update, so none is made)."""
    if not x.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous array, got strides {x.strides}")
    return x.reshape(len(x), math.prod(x.shape[1:]))


def add_bias(z: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``z += b`` in place for z (N, ..., C) C-contiguous and b (C,); returns z. b is tiled
    into one image's row: broadcast, it makes an inner loop of C values per pixel."""
    rows = per_image_rows(z)
    rows += tile_row(b, z)
    return z


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.maximum(x, 0)`` of a C-contiguous x (N, ...) into ``out`` (may be x) or a new
    array, against one image's row of zeros: the scalar 0 misses the vectorised loop."""
    rows, into = per_image_rows(x), None if out is None else per_image_rows(out)
    result = np.maximum(rows, np.zeros(rows.shape[1], dtype=x.dtype), out=into)
    return result.reshape(x.shape) if out is None else out


def _calls(a: np.ndarray, width: int, images: int) -> int:
    """One BLAS call per image where one is at most SMALL_MATMUL multiply-adds, else one."""
    return images if a.size // images * width <= budgets.SMALL_MATMUL else 1


def matmul_by_images(a: np.ndarray, b: np.ndarray, out: np.ndarray, images: int) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, a (R, K) holding ``images`` images' rows in turn, b (K,
    N), out C-contiguous of R*N floats, one BLAS call per small image: OpenBLAS's small-matrix
    kernels (SkylakeX and later) run it unpacked, to the same bits; others round apart."""
    calls = _calls(a, b.shape[1], images)
    np.matmul(a.reshape(calls, -1, a.shape[1]), b, out=per_image_rows(out).reshape(calls, -1, b.shape[1]))
    return out


def gram_by_images(a: np.ndarray, b: np.ndarray, images: int) -> np.ndarray:
    """``a.T @ b``, b (R, N): one product per ``matmul_by_images`` call, summed (another order)."""
    calls, (k, n) = _calls(a, b.shape[1], images), (a.shape[1], b.shape[1])
    return np.matmul(a.reshape(calls, -1, k).transpose(0, 2, 1), b.reshape(calls, -1, n)).sum(axis=0)


def conv_chunks(x: np.ndarray, W: np.ndarray) -> list[slice]:
    """The image chunks a 3x3 conv of x (N, H, W, C_in) trains in: CHUNK_BYTES over one image's
    im2col matrix or output, whichever is larger."""
    per_image = math.prod(x.shape[1:3]) * max(9 * x.shape[3], W.shape[3]) * x.dtype.itemsize
    return chunk_slices(len(x), max(1, budgets.CHUNK_BYTES // per_image))


def same_conv_cols(x: np.ndarray, W: np.ndarray, scratch: Scratch, pool_order: bool = False,
                   keep: bool = False) -> Iterator[tuple[slice, np.ndarray]]:
    """(part, cols) for each of ``conv_chunks``: ``im2col_rows`` of images ``part`` padded by
    a pixel on every side (a 3x3 'same' conv), in ``scratch`` unless ``keep``."""
    for part in conv_chunks(x, W):
        xpad = scratch.padded("xpad", x[part].shape, x.dtype)
        xpad[:, 1:-1, 1:-1] = x[part]
        yield part, im2col_rows(xpad, 3, pool_order=pool_order, scratch=None if keep else scratch)


def same_conv_grads(x: np.ndarray, W: np.ndarray, fill_dz: Callable[[slice, np.ndarray], object],
                    scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """dx (N, H, W, C_in) and dW (3, 3, C_in, C_out) of a 3x3 'same' stride-1 conv of x, in
    ``conv_chunks``, ``fill_dz(part, interior)`` writing dz (NHWC) of images ``part`` into a
    zero-bordered buffer: dx = its im2col matrix times W flipped, and dW from the same matrix,
    dW[p, q, c, o] = (x2d.T @ dzcols)[c, 2-p, 2-q, o] (docs/performance.md, "The fused block")."""
    n, h, w, c_in = x.shape
    c_out = W.shape[3]
    dW_flip, dx = np.zeros((c_in, 9 * c_out), dtype=x.dtype), np.empty(x.shape, dtype=x.dtype)
    # dx = 'same' correlation of dz (NHWC) with W_flip[p, q, o, c] = W[2-p, 2-q, c, o].
    w_flip = np.ascontiguousarray(W[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(9 * c_out, c_in)
    for part in conv_chunks(x, W):
        m = part.stop - part.start
        dzpad = scratch.padded("dzpad", (m, h, w, c_out), x.dtype)
        fill_dz(part, dzpad[:, 1:-1, 1:-1])
        dzcols = im2col_rows(dzpad, 3, scratch=scratch)
        matmul_by_images(dzcols, w_flip, dx[part], m)
        dW_flip += gram_by_images(x[part].reshape(-1, c_in), dzcols, m)
    return dx, dW_flip.reshape(c_in, 3, 3, c_out)[:, ::-1, ::-1].transpose(1, 2, 0, 3)


def column_sums(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` of a 2-D array as ``ones @ a``: BLAS, faster for a tall, narrow a."""
    return np.ones(a.shape[0], dtype=a.dtype) @ a


class Scratch:
    """Named work arrays that a block reuses from call to call, each grown as needed (a
    fresh one is fresh memory from the OS: docs/performance.md, "Chunks and work arrays").
    An array from ``get`` is overwritten by the next ``get`` of the same name."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        size = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.size < size or flat.dtype != dtype:
            flat = self._flat[name] = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)

    def padded(self, name: str, shape: tuple[int, int, int, int], dtype: np.dtype) -> np.ndarray:
        """``get`` of an (N, H+2, W+2, C) array for images of ``shape`` (N, H, W, C), its
        one-pixel border zeroed (``np.pad`` allocates and zeroes all of it every time); the
        caller writes the interior."""
        n, h, w, c = shape
        a = self.get(name, (n, h + 2, w + 2, c), dtype)
        a[:, 0] = a[:, -1] = a[:, :, 0] = a[:, :, -1] = 0
        return a


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


def pixel_windows(xpad: np.ndarray, k: int, stride: int) -> np.ndarray:
    """xpad (N, Hp, Wp, C) C-contiguous, already padded -> a view (N, H_out, W_out, k, k*C):
    [n, i, j, p] is row p of the window that output pixel (i, j) reads, its (q, c) values
    contiguous."""
    n, hp, wp, c = xpad.shape
    s_n, s_h, s_w, s_c = contiguous_strides(xpad)
    h_out, w_out = (output_size(size, k, stride) for size in (hp, wp))
    strides = (s_n, s_h * stride, s_w * stride, s_h, s_c)
    return as_strided(xpad, shape=(n, h_out, w_out, k, k * c), strides=strides, writeable=False)


def im2col_rows(xpad: np.ndarray, kernel: int, stride: int = 1, pool_order: bool = False,
                scratch: Scratch | None = None) -> np.ndarray:
    """The im2col matrix of any ``layers.Conv2D``, copied in runs of a kernel row's k*C
    adjacent floats (NumPy's strided copy pays per run): xpad (N, Hp, Wp, C)
    C-contiguous, already padded -> cols (N*H_out*W_out, k*k*C), columns in (p, q, c)
    order, as the reference's ``windows(...).reshape``. For C = 1 it is built tap-major
    and returned as its transpose, a Fortran-ordered view that BLAS reads as it is.

    ``pool_order=True`` (H_out and W_out even) orders the rows by position in the 2x2
    pooling window first: row ``((a*2 + b)*N + n)*(H/2)*(W/2) + i'*(W/2) + j'`` is output
    pixel (n, 2i' + a, 2j' + b), so a matmul yields four contiguous (N*H/2*W/2, C_out)
    blocks, one per window position. With ``scratch`` the matrix is its "cols" array,
    overwritten by the next call.
    """
    n, c, k = len(xpad), xpad.shape[3], kernel
    h, w = (output_size(size, k, stride) for size in xpad.shape[1:3])
    if c == 1:
        view = tap_major_windows(xpad, k, stride)  # (k, k, N, H, W)
        if pool_order:
            view = view.reshape(k, k, n, h // 2, 2, w // 2, 2).transpose(0, 1, 4, 6, 2, 3, 5)
    else:
        view = pixel_windows(xpad, k, stride)  # (N, H, W, k, k*C)
        if pool_order:
            view = view.reshape(n, h // 2, 2, w // 2, 2, k, k * c).transpose(2, 4, 0, 1, 3, 5, 6)
    shape, dtype = view.shape, xpad.dtype
    cols = np.empty(shape, dtype) if scratch is None else scratch.get("cols", shape, dtype)
    np.copyto(cols, view)
    return cols.reshape(k * k, -1).T if c == 1 else cols.reshape(-1, k * k * c)


def tap_major_windows(xpad: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Every k x k window of a one-channel xpad (N, Hp, Wp, 1), one every ``stride``
    pixels, tap-major: a view (k, k, N, H_out, W_out), ``[p, q, n, i, j] = xpad[n, i*stride
    + p, j*stride + q, 0]``. Copied, it is the transpose of the im2col matrix, moved in
    runs of W_out values where the row-major matrix has runs of one."""
    n, hp, wp, _ = xpad.shape
    s_n, s_h, s_w, _ = contiguous_strides(xpad)
    h_out, w_out = (output_size(size, k, stride) for size in (hp, wp))
    strides = (s_h, s_w, s_n, s_h * stride, s_w * stride)
    return as_strided(xpad, shape=(k, k, n, h_out, w_out), strides=strides, writeable=False)


def over_tiles(x: np.ndarray, size: int, combine: np.ufunc) -> np.ndarray:
    """``combine`` (a binary ufunc: np.add for a pool's sums, np.maximum for its maxima)
    folded over each size x size tile of x (N, H, W, C) -> (N, H // size, W // size, C),
    rows and columns past the last tile left out, in two passes of slices over long
    contiguous stretches: the ``size`` pixels of a tile row are adjacent (size*C floats),
    then its ``size`` rows are adjacent image rows."""
    x = np.ascontiguousarray(x[:, :x.shape[1] // size * size, :x.shape[2] // size * size])
    n, h, w, c = x.shape
    across = x.reshape(n, h, w // size, size * c)
    rows = _fold(combine, [across[..., q * c:(q + 1) * c] for q in range(size)])  # (N, H, W/size, C)
    down = rows.reshape(n, h // size, size, (w // size) * c)
    return _fold(combine, [down[:, :, p] for p in range(size)]).reshape(n, h // size, w // size, c)


def _fold(combine: np.ufunc, parts: list[np.ndarray]) -> np.ndarray:
    out = combine(parts[0], parts[1]) if len(parts) > 1 else parts[0].copy()  # a pool of size 1
    for part in parts[2:]:
        combine(out, part, out=out)
    return out


def feature_sums(a: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The sum of each feature (the last axis of ``shape``, default a's own) over all its
    other axes, (F,) in a's dtype, a holding N images C-contiguous: ``normalization.
    feature_sum`` with the N images summed by BLAS (``ones @ rows``), then the pixels of
    that sum in float64, as the reference accumulates."""
    shape = a.shape if shape is None else shape
    rows = a.reshape(shape[0], -1)
    per_image = np.ones(shape[0], dtype=a.dtype) @ rows
    return per_image.reshape(-1, shape[-1]).sum(axis=0, dtype=np.float64).astype(a.dtype)


def tile_row(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-feature vector v (F,) repeated over one image's row of x (N, ..., F): the
    operand that makes ``per_image_rows(x) - tile_row(v, x)`` an inner loop one image
    long, where broadcasting v makes one loop of F values per pixel (see ``add_bias``)."""
    return np.tile(v, math.prod(x.shape[1:]) // len(v))


def window_major_view(x: np.ndarray) -> np.ndarray:
    """An NHWC array x (N, H, W, C) seen as (2, 2, N, H/2, W/2, C): ``[a, b, n, i, j]`` is
    pixel (n, 2i + a, 2j + b). A view; assigning a window-major array to it writes NHWC."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(2, 4, 0, 1, 3, 5)


def max_pool_blocks(z: np.ndarray, routing: np.ndarray | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
    """2x2 max-pooling of a window-major z (4, N, H/2, W/2, C) -> (N, H/2, W/2, C), into
    ``out`` if given, as three elementwise maxima of contiguous blocks. ``routing`` (bool,
    z's shape, each ``routing[k]`` contiguous), if given, receives each window's
    first-arg-max mask (window order (0,0), (0,1), (1,0), (1,1), as MaxPool2D)."""
    a, b, c, d = z
    out = np.maximum(a, b, out=out)
    np.maximum(out, c, out=out)
    np.maximum(out, d, out=out)
    if routing is not None:
        # Mutually exclusive: "is a max" > "taken by an earlier position" means "is a max
        # and not taken". The last position takes what is left, NaN windows included.
        np.equal(a, out, out=routing[0])
        np.greater(b == out, routing[0], out=routing[1])
        taken = routing[0] | routing[1]
        np.greater(c == out, taken, out=routing[2])
        taken |= routing[2]
        np.logical_not(taken, out=routing[3])
    return out
