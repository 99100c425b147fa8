"""``ConvBatchNormReLUPool``: a block that trains as four and infers as one.

Batch norm normalises with the batch's own statistics in training, and with its moving
ones at inference, where it is a fixed affine map of each channel:
BN(z) = g * (z - moving_mean) + beta, g = gamma / sqrt(moving_variance + epsilon).
A conv followed by it is then one conv, of W * g (each output channel scaled by its g)
and bias g * (b - moving_mean) + beta (docs/derivations.md, section 13), and conv 3x3
'same' -> batch norm -> ReLU -> 2x2 max-pool infers as ``ConvReLUPool`` does, by pooling
windows.
"""

from __future__ import annotations

import numpy as np

from twinnet.numpy_nn import layers
from twinnet.numpy_nn.fast.blocks import ConvReLUPool, check_even
from twinnet.numpy_nn.fast.layer_blocks import FastActivation, FastBatchNorm, FastConv2D, TiledMaxPool2D
from twinnet.numpy_nn.fast.pool_windows import WindowInference
from twinnet.numpy_nn.normalization import BatchNorm


def folded_conv(conv: layers.Conv2D, bn: BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """The (W, b) of the one conv that computes bn(conv(x)) at inference: W (k, k, C_in,
    C_out) HWIO with output channel o scaled by g[o], b (C_out,) = g * (b - moving_mean)
    + beta."""
    g = bn.gamma / np.sqrt(bn.moving_variance + bn.epsilon)
    return conv.W * g, (conv.b - bn.moving_mean) * g + bn.beta


class ConvBatchNormReLUPool:
    """conv 3x3 'same' stride 1 -> batch norm -> ReLU -> 2x2 max-pool (derivations,
    sections 4, 13, 3, 5). Shapes: x (N, H, W, C_in), H and W even -> (N, H/2, W/2, C_out).

    Training runs the one-layer blocks of the four in turn (``FastConv2D``,
    ``FastBatchNorm``, ``FastActivation``, ``TiledMaxPool2D``), exactly as the fusion pass
    would have placed them. Inference folds the batch norm into the conv
    (``folded_conv``) and runs ``ConvReLUPool``'s inference form on the folded conv:
    the same values up to float32 rounding (the scaling by g happens before the sum
    instead of after it).
    """

    def __init__(self, conv: layers.Conv2D, bn: BatchNorm, relu: layers.ReLU, pool: layers.MaxPool2D,
                 needs_input_grad: bool = True) -> None:
        if not self.matches(conv, bn, relu, pool):
            raise ValueError(f"{conv.name}: ConvBatchNormReLUPool replaces only a 3x3 'same' stride-1 "
                             "conv, batch norm, ReLU and a 2x2 max-pool")
        self.replaces = (conv, bn, relu, pool)
        self.conv, self.bn = conv, bn
        self.steps = [FastConv2D(conv, needs_input_grad), FastBatchNorm(bn), FastActivation(relu),
                      TiledMaxPool2D(pool)]
        self.name, self.W, self.b = conv.name, conv.W, conv.b
        self.params = {**conv.params, **bn.params}
        self.needs_input_grad = needs_input_grad
        self._windows = WindowInference()

    @staticmethod
    def matches(*run: object) -> bool:
        """Whether a run of layers is one this block can replace."""
        return (len(run) >= 4 and isinstance(run[1], BatchNorm)
                and ConvReLUPool.matches(run[0], *run[2:4]))

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return {**self.steps[0].grads, **self.steps[1].grads}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        check_even(self.name, x)
        if not train and ConvReLUPool.infer_by_windows:
            return self._windows(x, *folded_conv(self.conv, self.bn))
        for step in self.steps:
            x = step.forward(x, train)
        return x

    def backward(self, d: np.ndarray) -> np.ndarray | None:
        for step in reversed(self.steps):
            d = step.backward(d)
        return d
