"""Fused blocks: one block in place of a run of reference layers, built from ``kernels.py``.

A block computes exactly what the layers it replaces (``replaces``) compute, and a test
holds it equal to their composition, values and gradients:

- ``ConvReLUPool``: Conv2D 3x3 'same' stride 1 -> ReLU -> MaxPool2D 2x2;
- ``DenseReLU``: Dense -> ReLU;
- ``FastConv2D``: any other Conv2D, alone;
- ``TiledAvgPool2D``: an AvgPool2D whose windows tile its input;
- ``FastReLU``, ``TiledMaxPool2D``: the other ReLUs and tiling max-pools, alone, trained
  as the reference layer and inferred in a faster form of the same arithmetic
  (``InferenceForm``);
- ``FastBatchNorm``: a batch norm, alone.

A block has the layers' interface: ``forward(x, train=True)``, ``backward(d)``,
``params`` and ``grads`` under canonical names. ``backward`` returns None when built
with ``needs_input_grad=False`` (the first block, whose input is the image, whose
gradient nobody needs). Parameters are those of the replaced layer, by reference.
"""

from __future__ import annotations

import numpy as np

from twinnet.numpy_nn import layers
from twinnet.numpy_nn.fast.kernels import (
    PaddedBuffer,
    Scratch,
    add_bias,
    column_sums,
    feature_sums,
    im2col_3x3_rows,
    im2col_rows,
    max_pool_blocks,
    per_image_rows,
    relu,
    tile_maxima,
    tile_means,
    tile_row,
    tile_spread,
    window_major_view,
)
from twinnet.numpy_nn.normalization import BatchNorm
from twinnet.util import chunk_slices

# A conv block runs its batch in chunks of images whose largest work array (an im2col
# matrix or a conv output) fits in CHUNK_BYTES: each array is then written and read back
# in the core's own caches rather than through memory, which the other core shares, while
# chunks stay few enough that their per-operation costs stay small (docs/performance.md,
# "Chunks and work arrays").
CHUNK_BYTES = 2 << 20


class ConvReLUPool:
    """conv 3x3 'same' -> ReLU -> 2x2 max-pool, one block (derivations, sections 4, 3, 5).

    Shapes: x (N, H, W, C_in), H and W even; W (3, 3, C_in, C_out) HWIO; b (C_out,);
    out (N, H/2, W/2, C_out).

    Its layout is private: the conv output z is computed window-major, (4, N, H/2, W/2,
    C_out) with ``z[2a + b, n, i, j] = conv(x)[n, 2i + a, 2j + b]``, by ordering the
    im2col rows by window position, so the pool reads four contiguous blocks. The bias
    and ReLU run on the pooled quarter of the values: the bias is the same for every
    position of a window, so max(z + b) = max(z) + b, and ReLU is monotonic, so
    relu(max(z)) = max(relu(z)) (docs/derivations.md, section 5, for why the gradients
    are the reference layers' too). In training the ReLU mask is kept at that size.

    The batch runs in chunks of ``chunk_size`` images, in order, with work arrays reused
    from call to call. The backward pass takes dW from the im2col matrix of the padded
    dz, which dx needs anyway (derivations, section 5); the first block, which computes
    no dx, keeps its forward im2col matrices for dW instead. The chunks' weight gradients
    are summed in chunk order.
    """

    def __init__(self, conv: layers.Conv2D, relu: layers.ReLU, pool: layers.MaxPool2D,
                 needs_input_grad: bool = True) -> None:
        if not self.matches(conv, relu, pool):
            raise ValueError(f"{conv.name}: ConvReLUPool replaces only a 3x3 'same' stride-1 conv, "
                             "ReLU and a 2x2 max-pool")
        self.replaces = (conv, relu, pool)
        self.name, self.W, self.b, self.params = conv.name, conv.W, conv.b, conv.params
        self.needs_input_grad = needs_input_grad
        self.cache: tuple | None = None
        self.grads: dict[str, np.ndarray] = {}
        self._xpad = PaddedBuffer()
        self._dzpad = PaddedBuffer()
        self._scratch = Scratch()

    @staticmethod
    def matches(*run: object) -> bool:
        """Whether a run of layers is one this block can replace."""
        if len(run) < 3:
            return False
        conv, relu, pool = run[:3]
        return (isinstance(conv, layers.Conv2D) and conv.W.shape[:2] == (3, 3) and conv.stride == 1
                and conv.padding == "same" and isinstance(relu, layers.ReLU)
                and isinstance(pool, layers.MaxPool2D) and (pool.size, pool.stride) == (2, 2))

    def chunk_size(self, h: int, w: int, itemsize: int) -> int:
        """Images per chunk for inputs of h x w pixels: CHUNK_BYTES over the larger of one
        image's im2col matrix and conv output."""
        c_in, c_out = self.W.shape[2:]
        return max(1, CHUNK_BYTES // (h * w * max(9 * c_in, c_out) * itemsize))

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        n, h, w, _ = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"{self.name}: max-pooling needs even height and width, got {h}x{w}")
        c_out = self.W.shape[3]
        pooled = np.empty((n, h // 2, w // 2, c_out), dtype=x.dtype)
        routing = self._scratch.get("routing", (4, *pooled.shape), np.dtype(bool)) if train else None
        # Without an input gradient to compute, the backward pass takes dW from these.
        kept_cols: list[np.ndarray] | None = [] if train and not self.needs_input_grad else None
        for part in chunk_slices(n, self.chunk_size(h, w, x.dtype.itemsize)):
            m = part.stop - part.start
            cols = im2col_3x3_rows(self._xpad.fill(x[part]), pool_order=True,
                              scratch=None if kept_cols is not None else self._scratch)
            z = self._scratch.get("z", (4, m, h // 2, w // 2, c_out), x.dtype)  # window-major
            np.matmul(cols, self.W.reshape(-1, c_out), out=z.reshape(-1, c_out))
            max_pool_blocks(z, None if routing is None else routing[:, part], out=pooled[part])
            if kept_cols is not None:
                kept_cols.append(cols)
        add_bias(pooled, self.b)
        if train:
            self.cache = (x, routing, pooled > 0, kept_cols)
        return relu(pooled, out=pooled)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        x, routing, positive, kept_cols = self.cache
        n, h, w, c_in = x.shape
        c_out = self.W.shape[3]
        dpooled = dout * positive  # through the ReLU
        if self.needs_input_grad:
            # dW from the im2col matrix of the padded dz that dx needs anyway (derivations,
            # section 5): dW[p, q, c, o] = (x2d.T @ dzcols)[c, 2-p, 2-q, o].
            dW_flip = np.zeros((c_in, 9 * c_out), dtype=dout.dtype)
            dx = np.empty(x.shape, dtype=dout.dtype)
            # dx = 'same' correlation of dz (NHWC) with W_flip[p, q, o, c] = W[2-p, 2-q, c, o].
            w_flip = np.ascontiguousarray(self.W[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(9 * c_out, c_in)
        else:
            dW = np.zeros((9 * c_in, c_out), dtype=dout.dtype)
        for i, part in enumerate(chunk_slices(n, self.chunk_size(h, w, dout.dtype.itemsize))):
            m = part.stop - part.start
            dz = self._scratch.get("dz", (4, m, h // 2, w // 2, c_out), dout.dtype)
            np.multiply(dpooled[part], routing[:, part], out=dz)  # to each window's first maximum
            if self.needs_input_grad:
                # dz goes from window-major straight into the padded buffer's interior.
                dzpad = self._dzpad.padded((m, h, w, c_out), dz.dtype)
                window_major_view(dzpad[:, 1:-1, 1:-1, :])[...] = dz.reshape(2, 2, m, h // 2, w // 2, c_out)
                dzcols = im2col_3x3_rows(dzpad, scratch=self._scratch)
                np.matmul(dzcols, w_flip, out=dx[part].reshape(-1, c_in))
                dW_flip += x[part].reshape(-1, c_in).T @ dzcols
            else:
                dW += kept_cols[i].T @ dz.reshape(-1, c_out)  # rows in the order of cols'
        if self.needs_input_grad:
            dW = dW_flip.reshape(c_in, 3, 3, c_out)[:, ::-1, ::-1].transpose(1, 2, 0, 3)
        self.grads = {f"{self.name}/W": np.ascontiguousarray(dW).reshape(self.W.shape),
                      f"{self.name}/b": column_sums(dpooled.reshape(-1, c_out))}
        return dx if self.needs_input_grad else None


class DenseReLU:
    """``relu(x @ W + b)``, one block (derivations, sections 2 and 3): the ReLU runs in
    place on the matmul's output, and only its mask is kept.

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), out (N, n_out).
    """

    def __init__(self, dense: layers.Dense, relu: layers.ReLU, needs_input_grad: bool = True) -> None:
        self.replaces = (dense, relu)
        self.name, self.W, self.b, self.params = dense.name, dense.W, dense.b, dense.params
        self.needs_input_grad = needs_input_grad
        self.grads: dict[str, np.ndarray] = {}

    @staticmethod
    def matches(*run: object) -> bool:
        """Whether a run of layers is one this block can replace."""
        return len(run) >= 2 and isinstance(run[0], layers.Dense) and isinstance(run[1], layers.ReLU)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        z = add_bias(x @ self.W, self.b)
        if train:
            self.cache = (x, z > 0)
        return relu(z, out=z)

    def backward(self, d: np.ndarray) -> np.ndarray | None:
        x, positive = self.cache
        dz = np.multiply(d, positive, out=d)  # d is ours to reuse: nothing else reads it
        self.grads = {f"{self.name}/W": x.T @ dz, f"{self.name}/b": dz.sum(axis=0)}
        return dz @ self.W.T if self.needs_input_grad else None


class FastConv2D:
    """A Conv2D of any kernel, stride and padding, alone (derivations, section 4), for
    the convs no fused block takes.

    Shapes as ``layers.Conv2D``'s. Forward: the im2col matrix from ``im2col_rows`` (long
    copies), one matmul and ``add_bias``. Backward: dW from that matrix and db as
    ``column_sums``, as the reference; dx as one small matmul per kernel tap, dz @ W[p, q].T,
    added into the strided view of dx that tap read (``layers.tap``). That is the
    reference's ``scatter_windows`` of dz @ W.T, with each added block contiguous instead
    of strided by the window's k*k*C_in values. None when ``needs_input_grad=False``.
    Inference, which keeps nothing for a backward pass, runs in chunks as ``ConvReLUPool``.
    """

    def __init__(self, conv: layers.Conv2D, needs_input_grad: bool = True) -> None:
        self.replaces = (conv,)
        self.conv = conv
        self.name, self.W, self.b, self.params = conv.name, conv.W, conv.b, conv.params
        self.needs_input_grad = needs_input_grad
        self.grads: dict[str, np.ndarray] = {}

    @staticmethod
    def matches(*run: object) -> bool:
        """Whether a run of layers starts with a layer this block can replace."""
        return len(run) >= 1 and isinstance(run[0], layers.Conv2D)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        k, _, c_in, c_out = self.W.shape
        rows, cols_pad = self.conv.pads(*x.shape[1:3])
        xpad = np.pad(x, ((0, 0), rows, cols_pad, (0, 0)))
        h_out, w_out = ((size - k) // self.conv.stride + 1 for size in xpad.shape[1:3])
        kernel = self.W.reshape(k * k * c_in, c_out)
        if train:
            cols = im2col_rows(xpad, k, self.conv.stride)
            self.cache = (cols, xpad.shape, x.shape, rows[0], cols_pad[0])
            return add_bias((cols @ kernel).reshape(len(x), h_out, w_out, c_out), self.b)
        # Inference keeps no im2col matrix, so it runs in chunks whose matrix stays in cache.
        z = np.empty((len(x), h_out, w_out, c_out), dtype=x.dtype)
        per_image = h_out * w_out * k * k * c_in * x.dtype.itemsize
        for part in chunk_slices(len(x), max(1, CHUNK_BYTES // per_image)):
            np.matmul(im2col_rows(xpad[part], k, self.conv.stride), kernel, out=z[part].reshape(-1, c_out))
        return add_bias(z, self.b)

    def backward(self, dz: np.ndarray) -> np.ndarray | None:
        cols, xpad_shape, (_, h, w, _), top, left = self.cache
        k, _, c_in, c_out = self.W.shape
        n, h_out, w_out = dz.shape[:3]
        dz2d = dz.reshape(-1, c_out)
        self.grads = {f"{self.name}/W": (cols.T @ dz2d).reshape(self.W.shape),
                      f"{self.name}/b": column_sums(dz2d)}
        if not self.needs_input_grad:
            return None
        W_t = np.ascontiguousarray(self.W.transpose(0, 1, 3, 2))  # (k, k, C_out, C_in)
        dxpad = np.zeros(xpad_shape, dtype=dz.dtype)
        for p in range(k):
            for q in range(k):
                layers.tap(dxpad, p, q, self.conv.stride, h_out, w_out)[...] += \
                    (dz2d @ W_t[p, q]).reshape(n, h_out, w_out, c_in)
        return dxpad[:, top:top + h, left:left + w]


class TiledAvgPool2D:
    """An AvgPool2D whose windows tile its input (stride = size, H and W multiples of
    size), alone (derivations, section 8): forward ``tile_means``, backward ``tile_spread``,
    in place of the reference's reduction over strided windows and ``scatter_windows``.

    Shapes: x (N, H, W, C) -> out (N, H/size, W/size, C).
    """

    params: dict[str, np.ndarray] = {}
    grads: dict[str, np.ndarray] = {}

    def __init__(self, pool: layers.AvgPool2D) -> None:
        self.replaces = (pool,)
        self.size = pool.size

    @staticmethod
    def matches(*run: object, shape: tuple[int, ...]) -> bool:
        """Whether a run of layers, whose input has ``shape`` (H, W, C), starts with an
        average pool whose windows tile it."""
        return len(run) >= 1 and isinstance(run[0], layers.AvgPool2D) and run[0].stride == run[0].size \
            and all(size % run[0].size == 0 for size in shape[:2])

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        return tile_means(np.ascontiguousarray(x), self.size)

    def backward(self, d: np.ndarray) -> np.ndarray:
        return tile_spread(d, self.size)


class InferenceForm:
    """A reference layer that trains as it is and infers in a faster form of the same
    arithmetic, bit for bit: ``forward(x, train=True)`` and ``backward`` are the layer's
    own (its caches, masks and gradients included); ``forward(x, train=False)`` is
    ``infer(x)``. Evaluation runs inference over whole splits, most of a run's forward
    passes."""

    def __init__(self, layer: layers.Layer | BatchNorm) -> None:
        self.replaces = (layer,)
        self.layer = layer
        self.params = layer.params

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return self.layer.grads

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        return self.layer.forward(x, train) if train else self.infer(np.ascontiguousarray(x))

    def backward(self, d: np.ndarray) -> np.ndarray:
        return self.layer.backward(d)

    def infer(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FastReLU(InferenceForm):
    """ReLU (derivations, section 3); inference by ``kernels.relu``."""

    @staticmethod
    def matches(*run: object) -> bool:
        return len(run) >= 1 and isinstance(run[0], layers.ReLU)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return relu(x)


class TiledMaxPool2D(InferenceForm):
    """A MaxPool2D whose windows tile its input (derivations, section 5); inference by
    ``tile_maxima``. Shapes: x (N, H, W, C) -> (N, H/size, W/size, C)."""

    @staticmethod
    def matches(*run: object, shape: tuple[int, ...]) -> bool:
        return len(run) >= 1 and isinstance(run[0], layers.MaxPool2D) and run[0].stride == run[0].size \
            and all(size % run[0].size == 0 for size in shape[:2])

    def infer(self, x: np.ndarray) -> np.ndarray:
        return tile_maxima(x, self.layer.size)


class FastBatchNorm:
    """BatchNorm, alone (derivations, section 13): the reference's formulas, with each
    per-feature vector tiled into one image's row (``tile_row``) so that NumPy's inner
    loops run a whole row rather than F values, and each sum over the M = N (*H*W)
    values of a feature taken as ``feature_sums``. Inference is the reference's
    arithmetic in the same order, bit for bit. Shapes as ``BatchNorm``'s.
    """

    def __init__(self, bn: BatchNorm) -> None:
        self.replaces = (bn,)
        self.bn = bn
        self.name, self.params = bn.name, bn.params
        self.grads: dict[str, np.ndarray] = {}

    @staticmethod
    def matches(*run: object) -> bool:
        return len(run) >= 1 and isinstance(run[0], BatchNorm)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        bn, x = self.bn, np.ascontiguousarray(x)
        if train:
            m = x.size // x.shape[-1]
            mean = feature_sums(x) / m
            centered = per_image_rows(x) - tile_row(mean, x)
            var = feature_sums(centered * centered, x.shape) / m
            for moving, stat in ((bn.moving_mean, mean), (bn.moving_variance, var)):
                moving[...] = moving * bn.momentum + stat * (1 - bn.momentum)
        else:
            mean, var = bn.moving_mean, bn.moving_variance
            centered = per_image_rows(x) - tile_row(mean, x)
        inv_std = 1 / np.sqrt(var + bn.epsilon)
        xhat = np.multiply(centered, tile_row(inv_std, x), out=centered)
        if train:
            self.cache = (xhat, inv_std, x.shape)
        out = xhat * tile_row(bn.gamma, x)
        out += tile_row(bn.beta, x)
        return out.reshape(x.shape)

    def backward(self, d: np.ndarray) -> np.ndarray:
        xhat, inv_std, shape = self.cache
        d = per_image_rows(np.ascontiguousarray(d))
        m = d.size // shape[-1]
        dgamma, dbeta = feature_sums(d * xhat, shape), feature_sums(d, shape)
        self.grads = {f"{self.name}/gamma": dgamma, f"{self.name}/beta": dbeta}
        dx = d * m
        dx -= tile_row(dbeta, xhat)
        dx -= xhat * tile_row(dgamma, xhat)
        dx *= tile_row(self.bn.gamma * inv_std / m, xhat)
        return dx.reshape(shape)


Block = ConvReLUPool | DenseReLU | FastConv2D | TiledAvgPool2D | FastReLU | TiledMaxPool2D | FastBatchNorm
