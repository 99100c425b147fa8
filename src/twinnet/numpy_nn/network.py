"""``NumpyModel``: one of the four models on the NumPy twin (the Backend protocol).

The layer objects are built from ``twinnet.models.get_spec``; their weights are the
very arrays of ``self._params`` (canonical names and layouts of
``twinnet.models.param_shapes``), so the optimizer's in-place updates reach them.
"""

from __future__ import annotations

import numpy as np

from twinnet import models
from twinnet.numpy_nn.layers import Conv2D, ConvReLUPool, Dense, Flatten, MaxPool2D, ReLU
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.numpy_nn.optimizers import make_optimizer

NumpyLayer = Dense | Conv2D | ReLU | MaxPool2D | Flatten

# logits() runs in two stages, each in chunks of images. The layers before Flatten
# (convolutions, on images) take chunks whose largest intermediate array stays near
# IMAGE_CHUNK_BYTES, inside the CPU caches: for the cnn (conv2's im2col matrix, 196 x
# 144 floats per image) that is 27 images, measured faster than 50 or more
# (docs/performance.md). The layers from Flatten on (dense, on vectors of at most 784
# floats) take MAX_EVAL_CHUNK images at once: larger matmuls run nearer the BLAS peak
# and pay the per-chunk Python overhead less often.
IMAGE_CHUNK_BYTES = 3 << 20
MAX_EVAL_CHUNK = 1000


def image_chunk(model: str, itemsize: int = 4) -> int:
    """Images per inference chunk for the layers of ``model`` before its Flatten:
    IMAGE_CHUNK_BYTES over the largest per-image array there (an im2col matrix, a
    conv output or the input), at most MAX_EVAL_CHUNK."""
    height, width = models.IMAGE_SHAPE[:2]
    largest = height * width * models.IMAGE_SHAPE[2]
    for spec in models.get_spec(model):
        if isinstance(spec, models.Flatten):
            break
        if isinstance(spec, models.Conv2D):
            largest = max(largest, height * width * spec.size**2 * spec.c_in,
                          height * width * spec.c_out)
        elif isinstance(spec, models.MaxPool2D):
            height, width = height // spec.size, width // spec.size
    return max(1, min(MAX_EVAL_CHUNK, IMAGE_CHUNK_BYTES // (largest * itemsize)))


def run_in_chunks(layers: list, x: np.ndarray, chunk: int) -> np.ndarray:
    """The inference forward of ``layers`` over x, ``chunk`` samples at a time."""
    def forward(batch: np.ndarray) -> np.ndarray:
        for layer in layers:
            batch = layer.forward(batch, train=False)
        return batch

    return np.concatenate([forward(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def conv_pool_runs(specs: tuple[models.Layer, ...]) -> set[int]:
    """Indices i where ``specs[i:i + 3]`` is Conv2D, ReLU, MaxPool2D."""
    kinds = [type(spec) for spec in specs]
    return {i for i in range(len(specs))
            if kinds[i:i + 3] == [models.Conv2D, models.ReLU, models.MaxPool2D]}


class NumpyModel:
    """Model ``model`` trained by hand-derived backpropagation in NumPy.

    Shapes: x (N, 28, 28, 1) NHWC with pixels in [0, 1], cast to ``dtype``; y (N,)
    integer labels; logits (N, 10). ``params`` maps canonical names (``dense1/W``,
    ``conv1/b`` ...) to arrays of the shapes in ``twinnet.models.param_shapes``.
    ``dtype`` is float32 for training and float64 for gradient checks; every array
    the model holds or returns is of that dtype.
    """

    backend = "numpy"

    def __init__(
        self,
        model: str,
        params: dict[str, np.ndarray],
        optimizer: str = "sgd",
        dtype: type[np.floating] | np.dtype = np.float32,
    ) -> None:
        self.model_name = model
        self.optimizer = optimizer
        self.dtype = np.dtype(dtype)
        self._shapes = models.param_shapes(model)
        self._check_params(params)
        self._params = {k: np.array(params[k], dtype=self.dtype, copy=True) for k in self._shapes}
        self._opt = make_optimizer(optimizer)
        self.layers: list[NumpyLayer] = []
        # Parametrised layers in spec order: (name, layer), for collecting grads.
        self._param_layers: list[tuple[str, Dense | Conv2D]] = []
        specs = models.get_spec(model)
        pooled = conv_pool_runs(specs)
        for i, spec in enumerate(specs):
            # A conv that ReLU and a max-pool follow, and that max-pool, pass the conv's
            # output in window-major layout (Conv2D): the pool then reads contiguous blocks.
            window_major = i in pooled or i - 2 in pooled
            self.layers.append(self._build(spec, not self._param_layers, window_major))
        # Backward stops at the first parametrised layer: below it lies only the
        # input (and parameter-free reshapes of it), whose gradient nobody needs.
        self._first_param_index = next(
            i for i, layer in enumerate(self.layers) if isinstance(layer, Dense | Conv2D)
        )
        # Inference runs each conv -> ReLU -> max-pool as one ConvReLUPool sharing the
        # conv's weights: the same function, without caches, pooling before the bias
        # and ReLU. Training keeps the three layers, whose caches the backward follows.
        self._inference_layers = [
            ConvReLUPool(layer) if i in pooled else layer
            for i, layer in enumerate(self.layers)
            if i - 1 not in pooled and i - 2 not in pooled
        ]
        split = next(i for i, layer in enumerate(self._inference_layers)
                     if isinstance(layer, Flatten))
        # (layers, images per chunk): the image stage, empty for the MLPs, then the rest.
        self._inference_stages = [
            (self._inference_layers[:split], image_chunk(model, self.dtype.itemsize)),
            (self._inference_layers[split:], MAX_EVAL_CHUNK),
        ]

    def _build(self, spec: models.Layer, first: bool, window_major: bool) -> NumpyLayer:
        if isinstance(spec, models.Dense | models.Conv2D):
            W, b = self._params[f"{spec.name}/W"], self._params[f"{spec.name}/b"]
            if isinstance(spec, models.Dense):
                layer = Dense(W, b, needs_input_grad=not first)
            else:
                layer = Conv2D(W, b, needs_input_grad=not first, window_major=window_major)
            self._param_layers.append((spec.name, layer))
            return layer
        if isinstance(spec, models.ReLU):
            return ReLU()
        if isinstance(spec, models.MaxPool2D):
            if spec.size != 2:
                raise ValueError(f"MaxPool2D supports size 2 only, got {spec.size}")
            return MaxPool2D(window_major=window_major)
        if isinstance(spec, models.Flatten):
            return Flatten()
        raise TypeError(f"no NumPy layer for spec {spec!r}")

    def _check_params(self, params: dict[str, np.ndarray]) -> None:
        if set(params) != set(self._shapes):
            raise ValueError(
                f"{self.model_name}: expected parameters {sorted(self._shapes)}, got {sorted(params)}"
            )
        for key, shape in self._shapes.items():
            if tuple(np.shape(params[key])) != shape:
                raise ValueError(
                    f"{self.model_name}: {key} has shape {np.shape(params[key])}, expected {shape}"
                )

    # -- parameters ---------------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, canonical names -> arrays of ``self.dtype``."""
        return {k: p.copy() for k, p in self._params.items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace all parameters (copied into the existing arrays, cast to ``self.dtype``)."""
        self._check_params(params)
        for key, p in self._params.items():
            np.copyto(p, params[key], casting="unsafe")

    # -- forward / backward -------------------------------------------------------

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The training forward: the spec's layers in order, each caching what its
        backward needs."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def _backward(self, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        d = dlogits
        for layer in reversed(self.layers[self._first_param_index:]):
            d = layer.backward(d)
        grads: dict[str, np.ndarray] = {}
        for name, layer in self._param_layers:
            grads[f"{name}/W"] = layer.grads["W"]
            grads[f"{name}/b"] = layer.grads["b"]
        return grads

    def _inputs(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 3:  # (N, 28, 28) without the channel axis
            x = x[..., None]
        labels = None if y is None else np.asarray(y).astype(np.intp, copy=False)
        return x, labels

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference forward pass: x (N, 28, 28, 1) -> logits (N, 10) of ``self.dtype``.

        The inference layers (no caches, ``ConvReLUPool`` blocks) run in two stages:
        those before Flatten in chunks of ``image_chunk(model)`` images, the rest in
        chunks of MAX_EVAL_CHUNK. The logits are those of the training forward.
        """
        x, _ = self._inputs(x)
        if len(x) == 0:
            return np.zeros((0, models.NUM_CLASSES), dtype=self.dtype)
        for layers, chunk in self._inference_stages:
            if layers:
                x = run_in_chunks(layers, x, chunk)
        return x

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy of the batch and d(loss)/d(param) for every parameter.

        x (N, 28, 28, 1), y (N,) -> (loss, {canonical name: gradient of the param's shape}).
        """
        x, y = self._inputs(x, y)
        loss, dlogits = softmax_cross_entropy(self._forward(x), y)
        return loss, self._backward(dlogits)

    def apply(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One optimizer update with learning rate ``lr`` (Keras semantics), in place."""
        grads = {k: np.asarray(grads[k], dtype=self.dtype) for k in self._params}
        self._opt.step(self._params, grads, lr)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        """One forward, one backward, one update; returns (mean loss, number correct)
        of the batch, both measured before the update."""
        x, y = self._inputs(x, y)
        logits = self._forward(x)
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        loss, dlogits = softmax_cross_entropy(logits, y)
        self._opt.step(self._params, self._backward(dlogits), lr)
        return loss, correct

    # -- optimizer state ----------------------------------------------------------

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's slots: for Adam ``<param>/m``, ``<param>/v``, ``iterations``;
        empty for SGD."""
        return self._opt.state_dict()

    def load_optimizer_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state_dict`` returned (slots cast to ``self.dtype``)."""
        state = dict(state)
        for key, arr in state.items():
            if key == "iterations":
                continue
            param = key.rsplit("/", 1)[0]
            if param not in self._shapes or np.shape(arr) != self._shapes[param]:
                raise ValueError(f"optimizer state {key!r} does not match model {self.model_name}")
            state[key] = np.asarray(arr, dtype=self.dtype)
        self._opt.load_state_dict(state)
