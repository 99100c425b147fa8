"""The fusion pass: reference layers in, the same network with fused blocks out; which
run becomes which block: docs/architecture.md, "The fusion pass"."""

from __future__ import annotations

from twinnet import models
from twinnet.numpy_nn import layers
from twinnet.numpy_nn.fast.blocks import ConvActPool, ConvReLUPool, DenseReLU
from twinnet.numpy_nn.fast.layer_blocks import (
    FastActivation,
    FastBatchNorm,
    FastConv2D,
    TiledAvgPool2D,
    TiledMaxPool2D,
)
from twinnet.numpy_nn.normalization import Dropout

# The blocks for one layer that take nothing but the layer (FastConv2D also takes needs_input_grad).
ONE_LAYER_BLOCKS = (TiledAvgPool2D, TiledMaxPool2D, FastActivation, FastBatchNorm)
# Layers whose inference output is their input, or a view of it.
VIEWS = (layers.Flatten, Dropout)


def fuse(model: str | tuple, layer_list: list) -> list:
    """``layer_list`` (the reference layers of ``model``, in spec order) with each run a
    fused block matches replaced by that block. The first layer with parameters gets
    ``needs_input_grad=False``: below it lies only the image."""
    shapes = [step.inp for step in models.walk(model)]
    fused: list = []
    i = 0
    while i < len(layer_list):
        run = layer_list[i:]
        first = not any(layer.params for layer in fused)
        even = all(size % 2 == 0 for size in shapes[i][:2])
        if ConvReLUPool.matches(*run[:3]) and even:
            fused.append(ConvReLUPool(*run[:3], needs_input_grad=not first))
            i += 3
        elif count := ConvActPool.matches(*run[:4]):
            fused.append(ConvActPool(*run[:count], needs_input_grad=not first))
            i += count
        elif DenseReLU.matches(*run[:2]):
            fused.append(DenseReLU(*run[:2], needs_input_grad=not first))
            i += 2
        elif FastConv2D.matches(run[0], shapes[i]):
            fused.append(FastConv2D(run[0], needs_input_grad=not first))
            i += 1
        else:
            kind = next((kind for kind in ONE_LAYER_BLOCKS if kind.matches(run[0], shapes[i])), None)
            fused.append(kind(run[0]) if kind is not None else run[0])
            if isinstance(fused[-1], FastBatchNorm) and len(fused) > 1 and isinstance(fused[-2], FastConv2D):
                fused[-2].bn, fused[-1].folded = run[0], True  # at inference, one conv
            if hasattr(fused[-1], "in_place"):  # only into an array this forward pass made
                fused[-1].in_place = not all(isinstance(layer, VIEWS) for layer in layer_list[:i])
            i += 1
    return fused
