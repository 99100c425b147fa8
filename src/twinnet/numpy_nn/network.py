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
from twinnet.numpy_nn.optimizers import SGD, Adam
from twinnet.util import in_chunks

# Inference runs at most this many images at a time: memory stays bounded, and the
# matmuls are still large enough to run near the BLAS peak.
MAX_EVAL_CHUNK = 1000
# The lesson's 14 classes and functions by name: what a learner's file may replace
# (``lesson``, below and in ``model.NumpyModel``; ``twinnet exercise``).
LESSON: dict[str, object] = {
    "Dense": layers.Dense, "ReLU": layers.ReLU, "Tanh": Tanh, "Sigmoid": Sigmoid,
    "LeakyReLU": LeakyReLU, "Flatten": layers.Flatten, "Conv2D": layers.Conv2D,
    "MaxPool2D": layers.MaxPool2D, "AvgPool2D": layers.AvgPool2D, "Dropout": Dropout,
    "BatchNorm": BatchNorm, "softmax_cross_entropy": softmax_cross_entropy, "SGD": SGD, "Adam": Adam,
}
# The layers that take no options, by their spec class.
PLAIN = {models.ReLUSpec: "ReLU", models.FlattenSpec: "Flatten", models.TanhSpec: "Tanh",
         models.SigmoidSpec: "Sigmoid"}


def build_layers(model: str, params: dict[str, np.ndarray],
                 lesson: dict[str, object] | None = None) -> list[layers.Layer]:
    """The reference layers of ``model``, in spec order, over ``params`` (held by
    reference: canonical names -> arrays). ``lesson`` maps some of ``LESSON``'s names to
    other classes of the same interface (a learner's), used in place of the lesson's."""
    cls = {**LESSON, **(lesson or {})}
    built: list[layers.Layer] = []
    for spec in models.get_spec(model):
        if isinstance(spec, models.DenseSpec):
            built.append(cls["Dense"](spec.name, params[f"{spec.name}/W"], params[f"{spec.name}/b"]))
        elif isinstance(spec, models.Conv2DSpec):
            built.append(cls["Conv2D"](spec.name, params[f"{spec.name}/W"], params[f"{spec.name}/b"],
                                       spec.stride, spec.padding))
        elif isinstance(spec, models.MaxPool2DSpec):
            built.append(cls["MaxPool2D"](spec.size, spec.stride))
        elif isinstance(spec, models.AvgPool2DSpec):
            built.append(cls["AvgPool2D"](spec.size, spec.stride))
        elif isinstance(spec, models.BatchNormSpec):
            built.append(cls["BatchNorm"](spec.name, params, spec.momentum, spec.epsilon))
        elif isinstance(spec, models.DropoutSpec):
            built.append(cls["Dropout"](spec.rate))
        elif isinstance(spec, models.LeakyReLUSpec):
            built.append(cls["LeakyReLU"](float(np.float32(spec.alpha))))  # as Keras's LeakyReLU: a float32
        elif type(spec) in PLAIN:
            built.append(cls[PLAIN[type(spec)]]())
        else:
            raise ValueError(f"the NumPy twin has no layer for {type(spec).__name__}")
    return built


def reference_network(model: str, params: dict[str, np.ndarray],
                      lesson: dict[str, object] | None = None) -> Network:
    """``Network`` of ``build_layers(model, params, lesson)``, with the loss of ``lesson``
    where it has one."""
    loss = (lesson or {}).get("softmax_cross_entropy", softmax_cross_entropy)
    return Network(build_layers(model, params, lesson), loss=loss)


class Network:
    """A list of layers run in order. x (N, 28, 28, 1) NHWC -> logits (N, 10).

    ``record``, where a method takes it, is a dict that receives every layer's output
    (``"outputs"``), the gradient flowing into each from above (``"grad_outputs"``) and
    d(loss)/d(x) (``"grad_input"``): what ``compare`` and ``trace`` show layer by layer.
    """

    def __init__(self, layer_list: list, eval_chunk: int = MAX_EVAL_CHUNK,
                 loss=softmax_cross_entropy) -> None:  # noqa: ANN001 (softmax_cross_entropy's signature)
        self.layers, self.eval_chunk, self.loss = layer_list, eval_chunk, loss

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
        loss, d = self.loss(logits, y, total)
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
