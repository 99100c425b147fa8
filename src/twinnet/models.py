"""The four MNIST models, described once as data.

Both twins build their networks from these layer lists, so an architecture is
written down in exactly one place. A spec is a tuple of layers applied in order
to an NHWC batch of shape (N, 28, 28, 1); the last layer produces the logits
(N, 10). Softmax is not a layer: it lives in the loss, which works from logits.

Parameter names and layouts are the canonical ones of the weights format:
``<layer>/W`` and ``<layer>/b``, dense ``W`` of shape (in, out), conv ``W`` of
shape (3, 3, in, out) (HWIO).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Dense:
    """``z = x @ W + b``; x (N, n_in) -> z (N, n_out)."""

    name: str
    n_in: int
    n_out: int


@dataclass(frozen=True)
class Conv2D:
    """3x3 cross-correlation, stride 1, zero padding 1 ('same').

    x (N, H, W, c_in) -> z (N, H, W, c_out); kernel W (3, 3, c_in, c_out).
    """

    name: str
    c_in: int
    c_out: int
    size: int = 3


@dataclass(frozen=True)
class ReLU:
    """Elementwise max(x, 0); any shape."""


@dataclass(frozen=True)
class MaxPool2D:
    """2x2 max-pooling with stride 2; (N, H, W, C) -> (N, H/2, W/2, C)."""

    size: int = 2


@dataclass(frozen=True)
class Flatten:
    """Row-major flatten: (N, ...) -> (N, prod(...)), i.e. ``x.reshape(N, -1)``."""


Layer = Dense | Conv2D | ReLU | MaxPool2D | Flatten

MODELS: dict[str, tuple[Layer, ...]] = {
    "linear": (
        Flatten(),
        Dense("dense1", 784, 10),
    ),
    "mlp128": (
        Flatten(),
        Dense("dense1", 784, 128),
        ReLU(),
        Dense("dense2", 128, 10),
    ),
    "mlp256x2": (
        Flatten(),
        Dense("dense1", 784, 256),
        ReLU(),
        Dense("dense2", 256, 256),
        ReLU(),
        Dense("dense3", 256, 10),
    ),
    "cnn": (
        Conv2D("conv1", 1, 16),
        ReLU(),
        MaxPool2D(),
        Conv2D("conv2", 16, 16),
        ReLU(),
        MaxPool2D(),
        Flatten(),
        Dense("dense1", 7 * 7 * 16, 256),
        ReLU(),
        Dense("dense2", 256, 10),
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)

# One line each, for --help, the report and error messages.
DESCRIPTIONS: dict[str, str] = {
    "linear": "flatten -> dense 10 -> softmax",
    "mlp128": "flatten -> dense 128 + ReLU -> dense 10 -> softmax",
    "mlp256x2": "flatten -> dense 256 + ReLU -> dense 256 + ReLU -> dense 10 -> softmax",
    "cnn": (
        "conv 3x3x16 same + ReLU -> maxpool 2x2 -> conv 3x3x16 same + ReLU -> maxpool 2x2"
        " -> flatten (784) -> dense 256 + ReLU -> dense 10 -> softmax"
    ),
}


def get_spec(name: str) -> tuple[Layer, ...]:
    """The layer list of model ``name``; raises ValueError for an unknown name."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(MODEL_NAMES)
        raise ValueError(f"unknown model {name!r}: expected one of {known}") from None


def param_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names of model ``name`` mapped to their shapes, in layer order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in get_spec(name):
        if isinstance(layer, Dense):
            shapes[f"{layer.name}/W"] = (layer.n_in, layer.n_out)
            shapes[f"{layer.name}/b"] = (layer.n_out,)
        elif isinstance(layer, Conv2D):
            shapes[f"{layer.name}/W"] = (layer.size, layer.size, layer.c_in, layer.c_out)
            shapes[f"{layer.name}/b"] = (layer.c_out,)
    return shapes


def init_params(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded initial parameters: Glorot-uniform weights, zero biases, float32.

    Both twins start from these same arrays, so with the same seed and data order
    their runs differ only by floating-point rounding. Glorot uniform draws from
    U(-a, a) with a = sqrt(6 / (fan_in + fan_out)); for a conv kernel the fans are
    multiplied by the receptive field (3 * 3), as in Keras.
    """
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for key, shape in param_shapes(name).items():
        if key.endswith("/b"):
            params[key] = np.zeros(shape, dtype=np.float32)
            continue
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params[key] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return params


def count_params(name: str) -> int:
    """Number of trainable scalars in model ``name``."""
    return sum(int(np.prod(s)) for s in param_shapes(name).values())


@dataclass(frozen=True)
class LayerShapes:
    """One layer of a spec with the per-image shapes around it: ``inp`` and ``out`` are
    (H, W, C) for image layers and (features,) after Flatten."""

    layer: Layer
    inp: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds of this layer's forward pass on one image (0 without weights)."""
        if isinstance(self.layer, Dense):
            return self.layer.n_in * self.layer.n_out
        if isinstance(self.layer, Conv2D):
            height, width, _ = self.out
            return height * width * self.layer.size**2 * self.layer.c_in * self.layer.c_out
        return 0


def walk(name: str) -> list[LayerShapes]:
    """The layers of model ``name`` in order, each with its per-image input and output
    shapes; the one place that follows an image's shape through a spec."""
    shape: tuple[int, ...] = IMAGE_SHAPE
    steps = []
    for layer in get_spec(name):
        if isinstance(layer, Dense):
            out: tuple[int, ...] = (layer.n_out,)
        elif isinstance(layer, Conv2D):
            out = (*shape[:2], layer.c_out)
        elif isinstance(layer, MaxPool2D):
            out = (shape[0] // layer.size, shape[1] // layer.size, shape[2])
        elif isinstance(layer, Flatten):
            out = (int(np.prod(shape)),)
        else:
            out = shape
        steps.append(LayerShapes(layer, shape, out))
        shape = out
    return steps


def multiply_adds_per_image(name: str) -> int:
    """Multiply-adds of one forward pass on one image (dense and conv layers only).

    The backward pass costs about twice this (gradients with respect to the input
    and to the weights), so a training step is about 3x forward; see ``bench``.
    """
    return sum(step.multiply_adds for step in walk(name))
