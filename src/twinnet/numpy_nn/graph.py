"""The NumPy twin's network as one list of blocks, and running it.

``build_blocks`` turns a model's spec into its blocks (``blocks.py``); ``forward`` and
``backward`` run them; ``part_step`` and ``part_logits`` are what one part of a batch
computes, on the calling thread or in a helper process (``helpers.py``).
``reference_layers`` is the same model as the plain reference layers, for checks.
"""

from __future__ import annotations

import numpy as np

from twinnet import models
from twinnet.numpy_nn import layers
from twinnet.numpy_nn.blocks import Block, ConvReLUPool, DenseBlock, FlattenBlock
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.util import in_chunks

# Inference runs the blocks on up to MAX_EVAL_CHUNK images at a time: memory stays
# bounded, and the dense layers' matmuls are large enough to run near the BLAS peak (the
# conv blocks cut theirs smaller: docs/performance.md, "Chunks and work arrays").
MAX_EVAL_CHUNK = 1000


def build_blocks(model_name: str, params: dict[str, np.ndarray]) -> list[Block]:
    """The blocks of ``model_name`` over ``params`` (held by reference), in spec order:
    conv -> ReLU -> max-pool runs become ConvReLUPool, dense [-> ReLU] a DenseBlock.

    The first block with parameters gets ``needs_input_grad=False``: below it lies only
    the image, whose gradient nobody needs.
    """
    specs = list(models.get_spec(model_name))
    blocks: list[Block] = []
    while specs:
        spec = specs.pop(0)
        first = not any(isinstance(b, ConvReLUPool | DenseBlock) for b in blocks)
        if isinstance(spec, models.Flatten):
            blocks.append(FlattenBlock())
            continue
        if not isinstance(spec, models.Dense | models.Conv2D):
            raise ValueError(f"{model_name}: no NumPy block starts with {spec!r}")
        W, b = params[f"{spec.name}/W"], params[f"{spec.name}/b"]
        follows = [type(s) for s in specs[:2]]
        if isinstance(spec, models.Conv2D):
            if follows != [models.ReLU, models.MaxPool2D] or specs[1].size != 2:
                raise ValueError(f"{model_name}: {spec.name} must be followed by ReLU and a 2x2 max-pool")
            del specs[:2]
            blocks.append(ConvReLUPool(spec.name, W, b, needs_input_grad=not first))
        else:
            relu = follows[:1] == [models.ReLU]
            del specs[:relu]
            blocks.append(DenseBlock(spec.name, W, b, relu, needs_input_grad=not first))
    return blocks


def reference_layers(model_name: str, params: dict[str, np.ndarray]) -> list[tuple[str | None, layers.Layer]]:
    """The model as reference layers (``layers.py``), one per spec layer, each with the
    parameter name prefix it reads (``"conv1"``) or None; for checks and for reading."""
    built: list[tuple[str | None, layers.Layer]] = []
    for spec in models.get_spec(model_name):
        if isinstance(spec, models.Dense | models.Conv2D):
            cls = layers.Dense if isinstance(spec, models.Dense) else layers.Conv2D
            built.append((spec.name, cls(params[f"{spec.name}/W"], params[f"{spec.name}/b"])))
        elif isinstance(spec, models.MaxPool2D):
            built.append((None, layers.MaxPool2D()))
        else:
            built.append((None, layers.ReLU() if isinstance(spec, models.ReLU) else layers.Flatten()))
    return built


def forward(blocks: list[Block], x: np.ndarray, train: bool) -> np.ndarray:
    """Run ``blocks`` in order on x."""
    for block in blocks:
        x = block.forward(x, train)
    return x


def backward(blocks: list[Block], d: np.ndarray) -> dict[str, np.ndarray]:
    """Run the blocks' backward passes in reverse, from d(loss)/d(logits); their gradients
    by canonical name. Stops at the first block that returns no input gradient."""
    grads: dict[str, np.ndarray] = {}
    for block in reversed(blocks):
        d = block.backward(d)
        grads.update(block.grads)
        if d is None:
            break
    return grads


def part_step(blocks: list[Block], x: np.ndarray, y: np.ndarray,
              total: int) -> tuple[float, int, dict[str, np.ndarray]]:
    """Forward and backward of one part of a batch of ``total`` images: its share of the
    mean loss, its number correct and its gradients (each divided by ``total``)."""
    logits = forward(blocks, x, train=True)
    correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
    loss, dlogits = softmax_cross_entropy(logits, y, total=total)
    return loss, correct, backward(blocks, dlogits)


def part_logits(blocks: list[Block], x: np.ndarray) -> np.ndarray:
    """Inference logits of one part, up to MAX_EVAL_CHUNK images at a time."""
    return in_chunks(lambda c: forward(blocks, c, train=False), x, MAX_EVAL_CHUNK)
