"""Running any list of layers: forward, backward, loss and gradients.

``build_layers`` turns a model's spec into reference layers over a dict of parameter
arrays; ``Network`` runs a list of them (or of the fast path's fused blocks, which have
the same two methods) and is the one run loop of the NumPy twin: training, gradient
checks, ``compare`` and ``trace`` all go through it.
"""

from __future__ import annotations

import numpy as np

from twinnet import models
from twinnet.numpy_nn import layers
from twinnet.numpy_nn.activations import LeakyReLU, Sigmoid, Tanh
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.numpy_nn.normalization import BatchNorm, Dropout
from twinnet.util import in_chunks

# Inference runs at most this many images at a time: memory stays bounded, and the
# matmuls are still large enough to run near the BLAS peak.
MAX_EVAL_CHUNK = 1000
# The layers that take no options, by their spec class.
PLAIN = {models.ReLUSpec: layers.ReLU, models.FlattenSpec: layers.Flatten,
         models.TanhSpec: Tanh, models.SigmoidSpec: Sigmoid}


def build_layers(model: str, params: dict[str, np.ndarray]) -> list[layers.Layer]:
    """The reference layers of ``model``, in spec order, over ``params`` (held by
    reference: canonical names -> arrays)."""
    built: list[layers.Layer] = []
    for spec in models.get_spec(model):
        if isinstance(spec, models.DenseSpec):
            built.append(layers.Dense(spec.name, params[f"{spec.name}/W"], params[f"{spec.name}/b"]))
        elif isinstance(spec, models.Conv2DSpec):
            built.append(layers.Conv2D(spec.name, params[f"{spec.name}/W"], params[f"{spec.name}/b"],
                                       spec.stride, spec.padding))
        elif isinstance(spec, models.MaxPool2DSpec):
            built.append(layers.MaxPool2D(spec.size, spec.stride))
        elif isinstance(spec, models.AvgPool2DSpec):
            built.append(layers.AvgPool2D(spec.size, spec.stride))
        elif isinstance(spec, models.BatchNormSpec):
            built.append(BatchNorm(spec.name, params, spec.momentum, spec.epsilon))
        elif isinstance(spec, models.DropoutSpec):
            built.append(Dropout(spec.rate))
        elif isinstance(spec, models.LeakyReLUSpec):
            built.append(LeakyReLU(float(np.float32(spec.alpha))))  # as Keras's LeakyReLU: a float32
        elif type(spec) in PLAIN:
            built.append(PLAIN[type(spec)]())
        else:
            raise ValueError(f"the NumPy twin has no layer for {type(spec).__name__}")
    return built


class Network:
    """A list of layers run in order. x (N, 28, 28, 1) NHWC -> logits (N, 10).

    ``record``, where a method takes it, is a dict that receives every layer's output
    (``"outputs"``), the gradient flowing into each from above (``"grad_outputs"``) and
    d(loss)/d(x) (``"grad_input"``): what ``compare`` and ``trace`` show layer by layer.
    """

    def __init__(self, layer_list: list, eval_chunk: int = MAX_EVAL_CHUNK) -> None:
        self.layers, self.eval_chunk = layer_list, eval_chunk

    def forward(self, x: np.ndarray, train: bool = False, record: dict | None = None) -> np.ndarray:
        """The logits; ``train=True`` keeps what ``loss_and_grads``' backward pass needs."""
        for layer in self.layers:
            x = layer.forward(x, train)
            if record is not None:
                record.setdefault("outputs", []).append(x)
        return x

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference logits (N, 10), up to ``eval_chunk`` images at a time."""
        return in_chunks(lambda chunk: self.forward(chunk, train=False), x, self.eval_chunk)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray, total: int | None = None,
                       record: dict | None = None) -> tuple[float, int, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy of the batch, its number of correct predictions and
        d(loss)/d(param) by canonical name. x (N, 28, 28, 1), y (N,) integer labels.

        ``total`` (default N) is what the loss is divided by: a part of a larger batch
        passes the batch's size, so the parts' losses and gradients add up to its.
        """
        logits = self.forward(x, train=True, record=record)
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        loss, d = softmax_cross_entropy(logits, y, total)
        grads: dict[str, np.ndarray] = {}
        for layer in reversed(self.layers):
            if record is not None:
                record.setdefault("grad_outputs", []).insert(0, d)
            d = layer.backward(d)  # None from a fast block that needs no input gradient
            grads.update(layer.grads)
            if d is None:
                break
        if record is not None:
            record["grad_input"] = d
        # In the layers' order, the canonical one (models.param_shapes), as TensorFlow lists them.
        return loss, correct, {key: grads[key] for layer in self.layers for key in layer.grads}
