"""The NumPy twin's layers: forward and hand-derived backward passes.

Each layer follows one pattern (cs231n style):

- ``forward(x)`` returns the output and keeps in explicit ``cache_*`` attributes
  exactly what ``backward`` needs; ``forward(x, train=False)`` (inference) returns
  the same output and keeps nothing, which skips the masks and copies that only
  ``backward`` would use;
- ``backward(dout)`` takes d(loss)/d(output) and returns d(loss)/d(input); layers
  with parameters also fill ``self.grads = {"W": dW, "b": db}``.

``backward`` must follow the ``forward`` whose cache it uses, with no other
``forward`` of the same layer in between. Arrays keep the dtype they arrive in
(float32 in training, float64 in gradient checks); parameters are held by
reference, so an optimizer updating them in place is seen by the layer.

The derivations of every ``backward`` are in ``docs/derivations.md``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

# NumPy runs an elementwise ufunc as an outer loop over an inner loop, and both
# helpers below shape their operands so the inner loop is long and SIMD-vectorised.
# Measured with NumPy 2.4 on this project's CPU (docs/performance.md): adding a
# (C,) bias to an (N*H*W, C) array makes N*H*W inner loops of C = 16 elements, 4x
# slower than adding a per-image row; and np.maximum against the scalar 0 misses the
# vectorised loop that np.maximum of two arrays takes, 4x slower than a zero row.


def per_image_rows(x: np.ndarray) -> np.ndarray:
    """A C-contiguous x as a 2-D view with one image per row (there may be 0 rows).

    An image is the last three axes (H, W, C) of a 4-D NHWC or 5-D window-major array
    (``Conv2D(window_major=True)``), and everything after the first axis otherwise.
    Every layer output is a fresh C-contiguous array; the check keeps an in-place
    update from silently landing in a reshaped copy instead.
    """
    if not x.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous array, got strides {x.strides}")
    row = math.prod(x.shape[-3:] if x.ndim >= 4 else x.shape[1:])
    return x.reshape(-1, row)


def add_bias(z: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``z += b`` in place and return z; z (N, ..., C) C-contiguous, b (C,). The bias
    is tiled into one image's row, broadcast over N."""
    rows = per_image_rows(z)
    rows += np.tile(b, rows.shape[1] // len(b))
    return z


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.maximum(x, 0)`` of a contiguous x (N, ...) into ``out`` (x itself for an
    in-place clip) or a new array; the zeros are one image's row, broadcast over N."""
    rows = per_image_rows(x)
    zeros = np.zeros(rows.shape[1], dtype=x.dtype)
    if out is None:
        return np.maximum(rows, zeros).reshape(x.shape)
    np.maximum(rows, zeros, out=out.reshape(rows.shape))
    return out


class Dense:
    """Affine layer ``z = x @ W + b``.

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), z (N, n_out).
    Backward: dx = dz @ W.T, dW = x.T @ dz, db = dz summed over N.

    ``needs_input_grad=False`` skips dx (returns None): the first layer of a
    model sees the images, whose gradient nobody uses.
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, needs_input_grad: bool = True) -> None:
        self.W = W
        self.b = b
        self.needs_input_grad = needs_input_grad
        self.grads: dict[str, np.ndarray] = {}
        self.cache_x: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache_x = x
        z = x @ self.W  # 2-D float32 matmul -> one BLAS sgemm call
        return add_bias(z, self.b)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        x = self.cache_x
        self.grads = {"W": x.T @ dout, "b": dout.sum(axis=0)}
        if not self.needs_input_grad:
            return None
        return dout @ self.W.T


class ReLU:
    """Elementwise ``max(x, 0)``; x and output of any shape (same shape).

    Backward: dx = dout where x > 0, else 0 (the subgradient at exactly 0 is
    taken as 0, as TensorFlow does).
    """

    def __init__(self) -> None:
        self.cache_mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache_mask = x > 0
            return relu(x)
        # Inference keeps nothing for a backward pass, so x (the fresh output of the
        # layer below) is clipped in place rather than copied.
        return relu(x, out=x)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # In place: dout is the fresh array the layer above returned, used by no one
        # else. The bool mask keeps dout's dtype.
        return np.multiply(dout, self.cache_mask, out=dout)


def column_sums(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` of a 2-D array, as the matrix-vector product ``ones @ a``.

    Same sums; for the tall, narrow gradients of the conv layers (e.g. 78,400 x 16)
    BLAS does it several times faster than NumPy's reduction over axis 0.
    """
    return np.ones(a.shape[0], dtype=a.dtype) @ a


class _PaddedBuffer:
    """A zero-bordered (N, H+2, W+2, C) array reused across calls with the same shape.

    Its one-pixel border is zeroed once at allocation and never written again, so
    each call only copies the interior: cheaper than ``np.pad`` every step.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def fill(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        shape = (n, h + 2, w + 2, c)
        if self.array is None or self.array.shape != shape or self.array.dtype != x.dtype:
            self.array = np.zeros(shape, dtype=x.dtype)
        self.array[:, 1:-1, 1:-1, :] = x
        return self.array


def im2col_3x3(xpad: np.ndarray, pool_order: bool = False) -> np.ndarray:
    """All 3x3 windows of a padded NHWC batch as rows of one matrix.

    xpad (N, H+2, W+2, C) -> cols (N*H*W, 9*C) with
    ``cols[(n*H + i)*W + j, (p*3 + q)*C + c] = xpad[n, i+p, j+q, c]``: one row per
    output pixel, columns in (p, q, c) order, the row order of an HWIO kernel
    reshaped to (9*C, C_out).

    ``pool_order=True`` (H and W even) orders the rows by position in the 2x2
    pooling window first: row ``((a*2 + b)*N + n)*(H/2)*(W/2) + i'*(W/2) + j'`` is
    output pixel (n, 2i' + a, 2j' + b). A matmul then yields four contiguous
    (N*H/2*W/2, C_out) blocks, one per window position, and 2x2 max-pooling becomes
    three elementwise maxima of whole blocks (``Conv2D(window_major=True)``).

    For C = 1 the matrix is built tap-major, (9, rows), and returned as its transpose
    (a Fortran-ordered view with the same values): a row-major copy would write runs
    one element long, while BLAS reads the transposed view without a copy.
    """
    n, hp, wp, c = xpad.shape
    h, w = hp - 2, wp - 2
    s_n, s_h, s_w, s_c = xpad.strides
    # windows[n, i, j, p, q, c] = xpad[n, i+p, j+q, c], a view: nothing is copied
    # until copyto writes the contiguous result.
    windows = as_strided(
        xpad, shape=(n, h, w, 3, 3, c), strides=(s_n, s_h, s_w, s_h, s_w, s_c),
        writeable=False,
    )
    if pool_order:
        # Split i = 2i' + a and j = 2j' + b (still a view), then put (a, b) first.
        windows = windows.reshape(n, h // 2, 2, w // 2, 2, 3, 3, c)
        windows = windows.transpose(2, 4, 0, 1, 3, 5, 6, 7)
    if c == 1:
        taps = np.moveaxis(windows[..., 0], (-2, -1), (0, 1))  # (3, 3, *pixel axes)
        cols_t = np.empty(taps.shape, dtype=xpad.dtype)
        np.copyto(cols_t, taps)
        return cols_t.reshape(9, -1).T
    cols = np.empty(windows.shape, dtype=xpad.dtype)
    np.copyto(cols, windows)
    return cols.reshape(-1, 9 * c)


def window_major_to_nhwc(x: np.ndarray) -> np.ndarray:
    """A window-major (4, N, H/2, W/2, C) array as a new NHWC (N, H, W, C) one:
    ``x[2*a + b, n, i, j, c]`` is pixel (n, 2i + a, 2j + b, c)."""
    _, n, h2, w2, c = x.shape
    return x.reshape(2, 2, n, h2, w2, c).transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * h2, 2 * w2, c)


class Conv2D:
    """3x3 cross-correlation, stride 1, zero padding 1 ('same'), NHWC / HWIO.

    Shapes: x (N, H, W, C_in), kernel W (3, 3, C_in, C_out), b (C_out,),
    z (N, H, W, C_out) with
    ``z[n, i, j, o] = b[o] + sum_{p, q, c} xpad[n, i + p, j + q, c] * W[p, q, c, o]``
    where ``xpad`` is x with one row/column of zeros on every side.

    Forward (im2col): ``cols = im2col_3x3(xpad)`` of shape (N*H*W, 9*C_in), then one
    matmul ``cols @ W.reshape(9*C_in, C_out)``.

    Backward: dW = cols.T @ dz2d (the cols of the forward), db = dz summed over
    N, H, W, and dx = the 'full' correlation of dz with the kernel flipped in both
    spatial axes and with in/out channels swapped (a transposed convolution), done
    the same way as the forward: ``im2col_3x3(dzpad) @ Wflip.reshape(9*C_out, C_in)``.
    ``needs_input_grad=False`` skips dx (returns None).

    ``window_major=True`` (for a conv that a 2x2 max-pool follows; H and W even)
    returns z in window-major layout, (4, N, H/2, W/2, C_out) with
    ``z_wm[2*a + b, n, i', j'] = z[n, 2i' + a, 2j' + b]``: the same values with the
    rows of the matmul permuted (``im2col_3x3(..., pool_order=True)``), so that
    ``MaxPool2D(window_major=True)`` pools contiguous blocks. Its backward takes dz in
    the same layout.
    """

    def __init__(
        self, W: np.ndarray, b: np.ndarray, needs_input_grad: bool = True,
        window_major: bool = False,
    ) -> None:
        if W.shape[0] != 3 or W.shape[1] != 3:
            raise ValueError(f"Conv2D supports 3x3 kernels only, got {W.shape[:2]}")
        self.W = W
        self.b = b
        self.needs_input_grad = needs_input_grad
        self.window_major = window_major
        self.grads: dict[str, np.ndarray] = {}
        self.cache_cols: np.ndarray | None = None
        self.cache_shape: tuple[int, ...] | None = None
        self._xpad = _PaddedBuffer()
        self._dzpad = _PaddedBuffer()

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        n, h, w, c_in = x.shape
        c_out = self.W.shape[3]
        if self.window_major and (h % 2 or w % 2):
            raise ValueError(f"window-major Conv2D needs even height and width, got {h}x{w}")
        cols = im2col_3x3(self._xpad.fill(x), pool_order=self.window_major)
        if train:
            self.cache_cols = cols
            self.cache_shape = x.shape
        shape = (4, n, h // 2, w // 2, c_out) if self.window_major else (n, h, w, c_out)
        z = (cols @ self.W.reshape(9 * c_in, c_out)).reshape(shape)
        return add_bias(z, self.b)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        n, h, w, c_in = self.cache_shape
        c_out = self.W.shape[3]
        dout2d = dout.reshape(n * h * w, c_out)  # rows in the order of cache_cols'
        self.grads = {
            "W": (self.cache_cols.T @ dout2d).reshape(self.W.shape),
            "b": column_sums(dout2d),
        }
        if not self.needs_input_grad:
            return None
        if self.window_major:
            dout = window_major_to_nhwc(dout)
        # dx[n, i, j, c] = sum_{p, q, o} dzpad[n, i+p, j+q, o] * W[2-p, 2-q, c, o]:
        # a 'same' correlation of dz with W_flip[p, q, o, c] = W[2-p, 2-q, c, o].
        w_flip = np.ascontiguousarray(self.W[::-1, ::-1].transpose(0, 1, 3, 2))
        dcols = im2col_3x3(self._dzpad.fill(dout))
        dx = dcols @ w_flip.reshape(9 * c_out, c_in)
        return dx.reshape(n, h, w, c_in)


class MaxPool2D:
    """2x2 max-pooling with stride 2 (H and W must be even).

    Shapes: x (N, H, W, C) -> out (N, H/2, W/2, C), out = max over each 2x2 window.
    Backward: each window's upstream gradient goes to the one element that was
    the max; on ties it goes to the first maximal element in row-major window
    order ((0,0), (0,1), (1,0), (1,1)), so every window passes on exactly its
    gradient, never a multiple of it.

    ``window_major=True`` takes x in the window-major layout of
    ``Conv2D(window_major=True)``, (4, N, H/2, W/2, C) with the window positions in
    that same order along the first axis, and returns dx in it: the four positions
    are then contiguous blocks instead of strided views with 16-float runs, 4x
    faster on the cnn's conv1 output (docs/performance.md).
    """

    def __init__(self, window_major: bool = False) -> None:
        self.window_major = window_major
        self.cache_mask: np.ndarray | None = None

    def _taps(self, arr: np.ndarray) -> tuple[np.ndarray, ...]:
        """The four window positions of an input-shaped ``arr``, each (N, H/2, W/2, C):
        its four blocks if window-major, else strided views of the NHWC array."""
        if self.window_major:
            return arr[0], arr[1], arr[2], arr[3]
        n, h, w, c = arr.shape
        x6 = arr.reshape(n, h // 2, 2, w // 2, 2, c)
        return x6[:, :, 0, :, 0, :], x6[:, :, 0, :, 1, :], x6[:, :, 1, :, 0, :], x6[:, :, 1, :, 1, :]

    @property
    def cache_masks(self) -> tuple[np.ndarray, ...]:
        """The arg-max mask of each window position, (N, H/2, W/2, C) views of ``cache_mask``."""
        return self._taps(self.cache_mask)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if self.window_major and (x.ndim != 5 or len(x) != 4):
            raise ValueError(f"window-major MaxPool2D needs (4, N, H/2, W/2, C), got {x.shape}")
        if not self.window_major and (x.shape[1] % 2 or x.shape[2] % 2):
            raise ValueError(f"MaxPool2D needs even height and width, got {x.shape[1]}x{x.shape[2]}")
        a, b, c, d = self._taps(x)
        # Three elementwise maxima: faster than a reduction over the window axes.
        out = np.maximum(a, b)
        np.maximum(out, c, out=out)
        np.maximum(out, d, out=out)
        if not train:
            return out
        # First-arg-max mask in the layout of x: True where an element is its window's
        # first maximum. Written through the four tap views, mutually exclusive;
        # "is a max" > "taken by an earlier position" means "is a max and not taken".
        mask = np.empty(x.shape, dtype=bool)
        m_a, m_b, m_c, m_d = self._taps(mask)
        np.equal(a, out, out=m_a)
        np.greater(b == out, m_a, out=m_b)
        taken = m_a | m_b
        np.greater(c == out, taken, out=m_c)
        taken |= m_c
        np.logical_not(taken, out=m_d)  # the max is somewhere; NaN windows route here too
        self.cache_mask = mask
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # One broadcast multiply: each window's dout, times the mask of its elements.
        if self.window_major:
            return dout[None] * self.cache_mask
        n, h2, w2, c = dout.shape
        dx6 = dout[:, :, None, :, None, :] * self.cache_mask.reshape(n, h2, 2, w2, 2, c)
        return dx6.reshape(self.cache_mask.shape)


class ConvReLUPool:
    """Inference-only fusion of ``Conv2D -> ReLU -> MaxPool2D`` (the cnn's two blocks).

    Shapes: x (N, H, W, C_in) with H and W even -> out (N, H/2, W/2, C_out), equal to
    ``MaxPool2D().forward(ReLU().forward(conv.forward(x)))``; the weights are those
    of ``conv``. It computes the conv's output in window-major layout, as
    ``Conv2D(window_major=True)`` does, and pools it first, because:

    - the bias is the same for every position of a window, so
      max(z + b) = max(z) + b: it is added after pooling, to a quarter of the values;
    - ReLU is monotonic, so max(relu(z)) = relu(max(z)): it clips the pooled values.

    No caches and no gradients: training runs the three layers, whose backward passes
    ``docs/derivations.md`` derives.
    """

    def __init__(self, conv: Conv2D) -> None:
        self.conv = conv
        self._pool = MaxPool2D(window_major=True)

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        if train:
            raise ValueError("ConvReLUPool is for inference; training runs the three layers")
        n, h, w, c_in = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"MaxPool2D needs even height and width, got {h}x{w}")
        c_out = self.conv.W.shape[3]
        cols = im2col_3x3(self.conv._xpad.fill(x), pool_order=True)
        z = (cols @ self.conv.W.reshape(9 * c_in, c_out)).reshape(4, n, h // 2, w // 2, c_out)
        out = self._pool.forward(z, train=False)
        return relu(add_bias(out, self.conv.b), out=out)


class Flatten:
    """Row-major flatten: x (N, d1, d2, ...) -> (N, d1*d2*...), ``x.reshape(N, -1)``.

    Backward reshapes the gradient back to the input shape.
    """

    def __init__(self) -> None:
        self.cache_shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.cache_shape)
