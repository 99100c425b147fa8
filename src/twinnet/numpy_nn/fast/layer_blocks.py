"""Blocks for one reference layer each, in a faster form of its maths; each names its
layer in ``replaces``, and ``matches(layer, shape)`` says whether it can replace a layer
whose input has that shape (H, W, C)."""

from __future__ import annotations

import math

import numpy as np

from twinnet.numpy_nn import layers
from twinnet.numpy_nn.activations import LeakyReLU, Sigmoid, Tanh
from twinnet.numpy_nn.fast import budgets
from twinnet.numpy_nn.fast.primitives import (
    Scratch,
    add_bias,
    column_sums,
    feature_sums,
    gram_by_images,
    im2col_rows,
    matmul_by_images,
    max_pool_blocks,
    over_tiles,
    per_image_rows,
    relu,
    row_kernel,
    same_conv_cols,
    same_conv_grads,
    tile_row,
    window_major_view,
)
from twinnet.numpy_nn.normalization import BatchNorm
from twinnet.util import chunk_slices


class LayerBlock:
    """A block for one reference layer, ``layer``: its parameters, by reference, and its
    gradients (``layer.grads``). ``forward(x, train=False)`` is the subclass's ``infer(x)``,
    x C-contiguous; training is the layer's own forward and backward (its caches, masks
    and gradients included) where the subclass has no faster form of them."""

    def __init__(self, layer: layers.Layer | BatchNorm) -> None:
        self.replaces, self.layer, self.params = (layer,), layer, layer.params

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return self.layer.grads

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        return self.layer.forward(x, train) if train else self.infer(np.ascontiguousarray(x))

    def backward(self, d: np.ndarray) -> np.ndarray:
        return self.layer.backward(d)


def folded_conv(conv: layers.Conv2D, bn: BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """The (W, b) of the one conv that computes bn(conv(x)) at inference: W (k, k, C_in,
    C_out) HWIO with output channel o scaled by g[o], b (C_out,) = g * (b - moving_mean)
    + beta."""
    g = bn.gamma / np.sqrt(bn.moving_variance + bn.epsilon)
    return conv.W * g, (conv.b - bn.moving_mean) * g + bn.beta


class FastConv2D(LayerBlock):
    """Any Conv2D (derivations, section 4), shapes as ``layers.Conv2D``'s: ``im2col_rows``,
    one matmul, ``add_bias``; backward ``layers.affine_grads``, and dx (None without
    ``needs_input_grad``) as dz @ W[p, q].T added into the view of dx each tap read
    (``layers.tap``), or for few input channels as rows of dz @ ``row_kernel``'s transpose;
    a 3x3 'same' stride-1 conv with dx trains as ``ConvReLUPool``'s conv (``in_chunks``).
    Inference keeps nothing, in chunks of ``INFERENCE_CHUNK_BYTES``, a batch norm right after
    it (``bn``, set by the fusion pass) folded in (``folded_conv``)."""

    bn: BatchNorm | None = None

    def __init__(self, conv: layers.Conv2D, needs_input_grad: bool = True) -> None:
        super().__init__(conv)
        self.name, self.W, self.b, self.needs_input_grad = conv.name, conv.W, conv.b, needs_input_grad
        self.in_chunks = needs_input_grad and (len(conv.W), conv.stride, conv.padding) == (3, 1, "same")
        self._scratch = Scratch()

    @staticmethod
    def matches(layer: object, shape: tuple[int, ...]) -> bool:
        return isinstance(layer, layers.Conv2D)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        k, _, c_in, c_out = self.W.shape
        if train and self.in_chunks:  # the im2col matrix of a chunk at a time, none kept
            z, self.cache = np.empty((*x.shape[:3], c_out), dtype=x.dtype), x
            for part, cols in same_conv_cols(x, self.W, self._scratch):
                matmul_by_images(cols, self.W.reshape(-1, c_out), z[part], part.stop - part.start)
            return add_bias(z, self.b)
        xpad, offset = self.layer.pad(x)
        xpad = np.ascontiguousarray(xpad)
        h_out, w_out = (layers.output_size(size, k, self.layer.stride) for size in xpad.shape[1:3])
        z = np.empty((len(x), h_out, w_out, c_out), dtype=x.dtype)
        if train:
            cols = im2col_rows(xpad, k, self.layer.stride)
            self.cache = (cols, xpad.shape, x.shape, *offset)
            return add_bias(matmul_by_images(cols, self.W.reshape(k * k * c_in, c_out), z, len(x)), self.b)
        W, b = folded_conv(self.layer, self.bn) if self.bn else (self.W, self.b)
        per_image = h_out * w_out * (k * k * c_in + c_out) * x.dtype.itemsize  # matrix and product
        for part in chunk_slices(len(x), max(1, budgets.INFERENCE_CHUNK_BYTES // per_image)):
            cols = im2col_rows(xpad[part], k, self.layer.stride, scratch=self._scratch)
            matmul_by_images(cols, W.reshape(-1, c_out), z[part], len(z[part]))
            add_bias(z[part], b)  # while the chunk is in cache
        return z

    def backward(self, dz: np.ndarray) -> np.ndarray | None:
        if self.in_chunks:
            dx, dW = same_conv_grads(self.cache, self.W, lambda part, into: np.copyto(into, dz[part]),
                                     self._scratch)
            self.layer.grads = {f"{self.name}/W": np.ascontiguousarray(dW),
                                f"{self.name}/b": column_sums(dz.reshape(-1, dz.shape[3]))}
            return dx
        cols, xpad_shape, (_, h, w, _), top, left = self.cache
        k, _, c_in, c_out = self.W.shape
        n, h_out, w_out = dz.shape[:3]
        dz2d = dz.reshape(-1, c_out)
        self.layer.grads = layers.affine_grads(self.name, cols, dz2d, self.W.shape, column_sums,
                                               lambda a, b: gram_by_images(a, b, n))
        if not self.needs_input_grad:
            return None
        dxpad, stride = np.zeros(xpad_shape, dtype=dz.dtype), self.layer.stride
        span = (w_out - 1) * stride + k  # the padded columns a row of dz reaches
        if span <= budgets.MAX_PATCH_WIDTHS * k and c_in < budgets.TAP_PRODUCT_WIDTH:
            kernel = np.ascontiguousarray(row_kernel(self.W, w_out, stride).T)  # (W_out*C_out, k*span*C_in)
            rows = (dz.reshape(n * h_out, -1) @ kernel).reshape(n, h_out, k, span, c_in)
            for p in range(k):  # row i of dz reaches padded rows i*stride + p
                dxpad[:, p:p + stride * h_out:stride, :span] += rows[:, :, p]
        else:
            for p, q in np.ndindex(k, k):
                layers.tap(dxpad, p, q, stride, h_out, w_out)[...] += \
                    (dz2d @ self.W[p, q].T).reshape(n, h_out, w_out, c_in)
        return dxpad[:, top:top + h, left:left + w]


class TiledAvgPool2D(LayerBlock):
    """An AvgPool2D whose windows tile its input (derivations, section 8), x (N, H, W, C) ->
    (N, H/size, W/size, C): forward ``over_tiles`` of np.add; backward each pixel d /
    size**2 of its tile's gradient, by two ``np.repeat``s, zero where no tile reads."""

    @staticmethod
    def matches(layer: object, shape: tuple[int, ...]) -> bool:
        return isinstance(layer, layers.AvgPool2D) and layer.stride == layer.size  # tiles (the top-left of) x

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self.shape, size = x.shape, self.layer.size
        means = over_tiles(x, size, np.add)
        means *= 1 / size**2
        return means

    def backward(self, d: np.ndarray) -> np.ndarray:
        size = self.layer.size
        spread = np.repeat(np.repeat(d * (1 / size**2), size, axis=2), size, axis=1)
        pad = [(0, a - b) for a, b in zip(self.shape, spread.shape, strict=True)]  # what no tile reads
        return np.pad(spread, pad) if any(after for _, after in pad) else spread


class FastActivation(LayerBlock):
    """An elementwise activation: ReLU, tanh, sigmoid or leaky ReLU (derivations,
    sections 3, 9-11), inferred in place (into the input when the fusion pass set
    ``in_place``: an array this forward pass made), in the reference's arithmetic. Leaky
    ReLU (0 <= alpha <= 1, as specs have it) trains without ``np.where``, in the values
    of the layer's own forward and backward (docs/performance.md, "Kernels")."""

    in_place = False

    @staticmethod
    def matches(layer: object, shape: tuple[int, ...]) -> bool:
        leaky = isinstance(layer, LeakyReLU) and 0 <= layer.alpha <= 1
        return leaky or isinstance(layer, layers.ReLU | Tanh | Sigmoid)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train or not isinstance(self.layer, LeakyReLU):
            return super().forward(x, train)
        self.layer.cache = x > 0
        return np.maximum(x, x * self.layer.alpha)  # where(x > 0, x, alpha * x) is the larger

    def backward(self, d: np.ndarray) -> np.ndarray:
        if not isinstance(self.layer, LeakyReLU):
            return self.layer.backward(d)
        alpha = d.dtype.type(self.layer.alpha)  # d times the slope: 1 where x > 0, else alpha
        slope = self.layer.cache * (1 - alpha)  # 1 - alpha is off by at most half an ulp: plus alpha, 1
        slope += alpha
        return np.multiply(slope, d, out=slope)

    def infer(self, x: np.ndarray) -> np.ndarray:
        layer, x = self.layer, x if self.in_place else x.copy()
        if isinstance(layer, layers.ReLU):
            return relu(x, out=x)
        if isinstance(layer, Tanh):
            return np.tanh(x, out=x)
        if isinstance(layer, Sigmoid):  # 0.5 * (1 + tanh(0.5 * x)), as Sigmoid computes it
            x *= 0.5
            np.tanh(x, out=x)
            x += 1
            x *= 0.5
            return x
        return np.maximum(x, x * layer.alpha, out=x)  # leaky ReLU, as in training


class TiledMaxPool2D(LayerBlock):
    """A MaxPool2D whose windows tile its input (derivations, section 5); inference by
    ``over_tiles`` of np.maximum; a 2x2 pool trains by ``max_pool_blocks`` over the
    window's four strided views, its routing in the layer's own cache (``routing``).
    Shapes: x (N, H, W, C) -> (N, H // size, W // size, C)."""

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train or self.layer.size != 2:
            return super().forward(x, train)
        n, h, w, c = x.shape
        out = np.empty((n, h // 2, w // 2, c), dtype=x.dtype)
        routing = np.empty((4, *out.shape), dtype=bool)
        for part in chunk_slices(n, max(1, budgets.ACTIVATION_BYTES // x[0].nbytes)):  # in cache
            view = window_major_view(x[part, :h - h % 2, :w - w % 2])
            max_pool_blocks([view[0, 0], view[0, 1], view[1, 0], view[1, 1]], routing[:, part], out[part])
        self.layer.cache = (routing, x.shape)
        return out

    def backward(self, d: np.ndarray) -> np.ndarray:
        routing, shape = self.layer.cache
        if self.layer.size != 2:
            return super().backward(d)
        h, w = shape[1:3]
        dx = (np.zeros if h % 2 or w % 2 else np.empty)(shape, dtype=d.dtype)
        view = window_major_view(dx[:, :h - h % 2, :w - w % 2])
        for k, route in enumerate(routing):  # the windows tile dx: each element written once
            np.multiply(d, route, out=view[k // 2, k % 2])
        return dx

    @staticmethod
    def matches(layer: object, shape: tuple[int, ...]) -> bool:
        return isinstance(layer, layers.MaxPool2D) and layer.stride == layer.size

    def infer(self, x: np.ndarray) -> np.ndarray:
        return over_tiles(x, self.layer.size, np.maximum)


class FastBatchNorm(LayerBlock):
    """BatchNorm, alone (derivations, section 13): the reference's formulas, with each
    per-feature vector tiled into one image's row (``tile_row``), so that NumPy's inner
    loops run a whole row rather than F values, and sums over a feature's M = N (*H*W)
    values as ``feature_sums``. Inference is the reference's arithmetic, bit for bit, in
    place as ``FastActivation``'s (none when ``folded``). Shapes as ``BatchNorm``'s."""

    @staticmethod
    def matches(layer: object, shape: tuple[int, ...]) -> bool:
        return isinstance(layer, BatchNorm)

    in_place = False  # inference into the input array (set by the fusion pass)
    folded = False  # inference leaves x as it is: the conv before took the batch norm in
    reduce = None  # a split step's sums over every part (``fast_network.PartSums``); None: one part

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train:
            return super().forward(x, train)
        bn, x = self.layer, np.ascontiguousarray(x)
        m = self._values_per_feature(x.shape)
        mean = self._total(feature_sums(x))[0] / m
        centered = per_image_rows(x) - tile_row(mean, x)
        var = self._total(feature_sums(centered * centered, x.shape))[0] / m
        bn.update_moving_statistics(mean, var)
        inv_std = 1 / np.sqrt(var + bn.epsilon)
        xhat = np.multiply(centered, tile_row(inv_std, x), out=centered)
        self.cache = (xhat, inv_std, x.shape)
        out = xhat * tile_row(bn.gamma, x)
        out += tile_row(bn.beta, x)
        return out.reshape(x.shape)

    def backward(self, d: np.ndarray) -> np.ndarray:
        xhat, inv_std, shape = self.cache
        d = per_image_rows(np.ascontiguousarray(d))
        m = self._values_per_feature(shape)
        dgamma, dbeta = feature_sums(d * xhat, shape), feature_sums(d, shape)
        self.layer.grads = {f"{self.layer.name}/gamma": dgamma, f"{self.layer.name}/beta": dbeta}
        dgamma, dbeta = self._total(dgamma, dbeta)  # the batch's, where the grads above are this part's
        dx = np.empty_like(d)
        tiles = [tile_row(v, xhat) for v in (dbeta, dgamma, self.layer.gamma * inv_std / m)]
        for part in chunk_slices(len(d), max(1, budgets.ACTIVATION_BYTES // d[0].nbytes)):  # in cache
            out = np.multiply(d[part], m, out=dx[part])
            out -= tiles[0]
            out -= xhat[part] * tiles[1]
            out *= tiles[2]
        return dx.reshape(shape)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The reference's arithmetic, in place."""
        if self.folded:
            return x
        bn, rows = self.layer, per_image_rows(x if self.in_place else x.copy())
        rows -= tile_row(bn.moving_mean, x)
        rows *= tile_row(1 / np.sqrt(bn.moving_variance + bn.epsilon), x)
        rows *= tile_row(bn.gamma, x)
        rows += tile_row(bn.beta, x)
        return rows.reshape(x.shape)

    def _values_per_feature(self, shape: tuple[int, ...]) -> int:
        """M, the values of a feature in the whole batch: N (*H*W)."""
        images = shape[0] if self.reduce is None else self.reduce.images
        return images * math.prod(shape[1:-1])

    def _total(self, *sums: np.ndarray) -> tuple[np.ndarray, ...]:
        return sums if self.reduce is None else self.reduce(sums)
