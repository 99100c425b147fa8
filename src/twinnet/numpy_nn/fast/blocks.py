"""Fused blocks, each in place of a run of reference layers (``replaces``), with the
layers' interface (``forward(x, train=True)``, ``backward(d)``, ``params`` and ``grads``,
the layers' parameters by reference). ``backward`` returns None when built with
``needs_input_grad=False`` (the first block: nobody needs the image's gradient)."""

from __future__ import annotations

import numpy as np

from twinnet.numpy_nn import layers
from twinnet.numpy_nn.fast.layer_blocks import (
    FastActivation,
    FastBatchNorm,
    FastConv2D,
    TiledAvgPool2D,
    TiledMaxPool2D,
    folded_conv,
)
from twinnet.numpy_nn.fast.pool_windows import WindowInference
from twinnet.numpy_nn.fast.primitives import (
    Scratch,
    add_bias,
    column_sums,
    conv_chunks,
    gram_by_images,
    matmul_by_images,
    max_pool_blocks,
    relu,
    same_conv_cols,
    same_conv_grads,
    window_major_view,
)
from twinnet.numpy_nn.normalization import BatchNorm


class ConvReLUPool:
    """conv 3x3 'same' -> ReLU -> 2x2 max-pool, one block (derivations, sections 4, 3, 5):
    x (N, H, W, C_in), H and W even; W (3, 3, C_in, C_out) HWIO; b (C_out,) -> (N, H/2,
    W/2, C_out). Its conv output is window-major, (4, N, H/2, W/2, C_out), ``z[2a + b, n,
    i, j] = conv(x)[n, 2i + a, 2j + b]``: the pool reads four contiguous blocks, and the
    bias and ReLU run on the pooled quarter. Chunks of images (``conv_chunks``), their
    gradients summed in chunk order; dW from the padded dz's im2col matrix (the first
    block: the forward's). Why these are the reference's values: docs/performance.md,
    "The fused block". Inference by pooling windows unless ``infer_by_windows`` is False.
    """

    infer_by_windows = True

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
        self._scratch = Scratch()
        self._windows, self._relu = WindowInference(), FastActivation(relu)
        self._relu.in_place = True

    @staticmethod
    def matches(*run: object) -> bool:
        conv, relu, pool = (*run, None, None, None)[:3]  # None past a short run's end: no match
        return (isinstance(conv, layers.Conv2D) and conv.W.shape[:2] == (3, 3) and conv.stride == 1
                and conv.padding == "same" and isinstance(relu, layers.ReLU)
                and isinstance(pool, layers.MaxPool2D) and (pool.size, pool.stride) == (2, 2))

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        n, h, w, _ = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"{self.name}: max-pooling needs even height and width, got {h}x{w}")
        if not train and self.infer_by_windows:
            return self._windows(x, self.W, self.b, 1, self._relu.infer, mean=False)
        c_out = self.W.shape[3]
        pooled = np.empty((n, h // 2, w // 2, c_out), dtype=x.dtype)
        routing = self._scratch.get("routing", (4, *pooled.shape), np.dtype(bool)) if train else None
        keep, kept_cols = train and not self.needs_input_grad, []  # no input gradient: dW from these
        for part, cols in same_conv_cols(x, self.W, self._scratch, pool_order=True, keep=keep):
            m = part.stop - part.start
            z = self._scratch.get("z", (4, m, h // 2, w // 2, c_out), x.dtype)  # window-major
            matmul_by_images(cols, self.W.reshape(-1, c_out), z, m)
            max_pool_blocks(z, None if routing is None else routing[:, part], out=pooled[part])
            if keep:
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

        def window_dz(part: slice) -> np.ndarray:  # (4, m, H/2, W/2, C_out), window-major
            dz = self._scratch.get("dz", (4, part.stop - part.start, h // 2, w // 2, c_out), dout.dtype)
            return np.multiply(dpooled[part], routing[:, part], out=dz)  # to each window's first maximum

        def into_padded(part: slice, interior: np.ndarray) -> None:  # from window-major straight in
            window_major_view(interior)[...] = window_dz(part).reshape(2, 2, -1, h // 2, w // 2, c_out)

        if self.needs_input_grad:
            dx, dW = same_conv_grads(x, self.W, into_padded, self._scratch)
        else:  # the first block: dW from the forward's im2col matrices, rows in their order
            dx, dW = None, np.zeros((9 * c_in, c_out), dtype=dout.dtype)
            for cols, part in zip(kept_cols, conv_chunks(x, self.W), strict=True):
                dW += gram_by_images(cols, window_dz(part).reshape(-1, c_out), part.stop - part.start)
        self.grads = {f"{self.name}/W": np.ascontiguousarray(dW).reshape(self.W.shape),
                      f"{self.name}/b": column_sums(dpooled.reshape(-1, c_out))}
        return dx


class DenseReLU:
    """``relu(x @ W + b)``, one block (derivations, sections 2 and 3), x (N, n_in) -> (N,
    n_out): the ReLU in place on the matmul's output, its mask kept; the backward is the
    Dense layer's (the first layer's: its parameter gradients only)."""

    def __init__(self, dense: layers.Dense, relu: layers.ReLU, needs_input_grad: bool = True) -> None:
        self.replaces = (dense, relu)
        self.dense = dense
        self.name, self.W, self.b, self.params = dense.name, dense.W, dense.b, dense.params
        self.needs_input_grad = needs_input_grad

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return self.dense.grads

    @staticmethod
    def matches(*run: object) -> bool:
        return len(run) >= 2 and isinstance(run[0], layers.Dense) and isinstance(run[1], layers.ReLU)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        z = add_bias(x @ self.W, self.b)
        if train:
            self.dense.cache, self.positive = x, z > 0
        return relu(z, out=z)

    def backward(self, d: np.ndarray) -> np.ndarray | None:
        dz = np.multiply(d, self.positive, out=d)  # d is ours to reuse: nothing else reads it
        if self.needs_input_grad:
            return self.dense.backward(dz)
        self.dense.grads = layers.affine_grads(self.name, self.dense.cache, dz, self.W.shape)
        return None


class ConvActPool:
    """conv (stride 1; k x k 'valid', or 'same' for odd k) -> [batch norm] -> activation ->
    2x2 pool of stride 2, max or average (derivations, sections 4, 13, 3 and 9-11, 5 and
    8), the runs ``ConvReLUPool`` does not take: x (N, H, W, C_in) -> (N, H_out // 2,
    W_out // 2, C_out). Trains as the one-layer blocks of its layers (a ReLU after a
    max-pool's: relu(max(z)) = max(relu(z)), the same gradients, docs/performance.md, "The
    fused block"); infers by pooling windows (``pool_windows.py``) of the conv with the
    batch norm folded in (``folded_conv``): the same values up to float32 rounding."""

    def __init__(self, *run: layers.Layer | BatchNorm, needs_input_grad: bool = True) -> None:
        if not self.matches(*run):
            raise ValueError(f"{getattr(run[0], 'name', 'conv')}: ConvActPool replaces only a stride-1 "
                             "conv, an optional batch norm, an activation and a 2x2 pool")
        self.replaces = run[:self.matches(*run)]
        self.conv, *self.bn, act, pool = self.replaces
        self.mean = isinstance(pool, layers.AvgPool2D)
        steps = [FastConv2D(self.conv, needs_input_grad), *map(FastBatchNorm, self.bn)]
        self.act = FastActivation(act)
        self.act.in_place = True  # in the block, its input is always an array the block made
        pooling = TiledAvgPool2D(pool) if self.mean else TiledMaxPool2D(pool)
        relu_last = isinstance(act, layers.ReLU) and not self.mean
        self.steps = [*steps, *((pooling, self.act) if relu_last else (self.act, pooling))]
        self.name, self.W, self.b = self.conv.name, self.conv.W, self.conv.b
        self.params = {key: p for step in steps for key, p in step.params.items()}
        self.needs_input_grad = needs_input_grad
        self._windows = WindowInference()

    @staticmethod
    def matches(*run: object) -> int:
        """How many layers of the run this block replaces (3, or 4 with a batch norm), 0 if none."""
        count = 4 if len(run) > 1 and isinstance(run[1], BatchNorm) else 3
        padded = (*run, None, None, None)  # None past a short run's end: no match
        conv, act, pool = padded[0], padded[count - 2], padded[count - 1]
        fits = (isinstance(conv, layers.Conv2D) and conv.stride == 1
                and (conv.padding == "valid" or conv.W.shape[0] % 2 == 1)
                and FastActivation.matches(act, ())  # monotone: a leaky ReLU's alpha is in [0, 1]
                and isinstance(pool, layers.MaxPool2D | layers.AvgPool2D)
                and (pool.size, pool.stride) == (2, 2))
        return count if fits else 0

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return {key: g for step in self.steps for key, g in step.grads.items()}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train and ConvReLUPool.infer_by_windows:
            W, b = folded_conv(self.conv, self.bn[0]) if self.bn else (self.W, self.b)
            pad = self.conv.W.shape[0] // 2 if self.conv.padding == "same" else 0
            return self._windows(x, W, b, pad, self.act.infer, self.mean)
        for step in self.steps:
            x = step.forward(x, train)
        return x

    def backward(self, d: np.ndarray) -> np.ndarray | None:
        for step in reversed(self.steps):
            d = step.backward(d)
        return d
