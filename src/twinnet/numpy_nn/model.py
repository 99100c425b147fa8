"""``NumpyModel``: one model on the NumPy twin, the object the training loop holds.

It owns the parameters, the optimizer and the network that computes. With
``fast=False`` that network is the reference layers as they are (``network.py``); by
default it is the fast path (``fast/``), which fuses runs of layers into faster blocks
and splits a batch over the cores, and which a test holds equal to the reference one.
"""

from __future__ import annotations

import numpy as np

from twinnet import models
from twinnet.numpy_nn import optimizer_state
from twinnet.numpy_nn.network import Network, build_layers, reference_network
from twinnet.numpy_nn.normalization import Dropout
from twinnet.numpy_nn.optimizers import make_optimizer
from twinnet.weights import check_params

FLUSH_EVERY = 10  # optimizer updates between flushes of denormal moments (NumpyModel._update)


class NumpyModel:
    """Model ``model_name`` (a built-in name or a spec file) trained by hand-derived
    backpropagation in NumPy; implements ``twinnet.backend.Backend``.

    Shapes: x (N, 28, 28, 1) NHWC with pixels in [0, 1], cast to ``dtype``; y (N,)
    integer labels; logits (N, 10). Parameters map canonical names (``dense1/W`` ...)
    to arrays of the shapes in ``twinnet.models.param_shapes``. ``dtype`` is float32
    for training and float64 for gradient checks. ``fast=False`` trains with the
    reference layers alone; ``threads`` (default: BLAS's thread count) is how many
    parts the fast path splits a batch into, which changes results only by rounding.
    ``lesson`` maps some of ``network.LESSON``'s 14 names to a learner's classes and
    functions (``twinnet exercise``), used in place of the lesson's; it implies
    ``fast=False``, since the fast path's blocks are the lesson's maths.
    """

    backend = "numpy"
    # Images predict_logits hands logits at a time: a whole MNIST split, since its networks
    # cut their own work (Network.eval_chunk; the fast path hands out 10,000, budgets.INPUT_IMAGES).
    eval_batch = 10_000

    def __init__(self, model_name: str, params: dict[str, np.ndarray], optimizer: str = "sgd",
                 dtype: type[np.floating] | np.dtype = np.float32, threads: int | None = None,
                 fast: bool = True, lesson: dict[str, object] | None = None) -> None:
        self.model_name, self.optimizer, self.dtype = model_name, optimizer, np.dtype(dtype)
        check_params(model_name, params, dtype=None)
        self._params = {k: np.array(params[k], dtype=self.dtype) for k in models.param_shapes(model_name)}
        self.lesson = dict(lesson or {})
        optimizer_class = self.lesson.get({"sgd": "SGD", "adam": "Adam"}.get(optimizer, ""))
        self._opt = optimizer_class() if optimizer_class is not None else make_optimizer(optimizer)
        if self.lesson:
            self.network = reference_network(model_name, self._params, self.lesson)
        elif fast:
            from twinnet.numpy_nn.fast import FastNetwork

            self.network: Network | FastNetwork = FastNetwork(model_name, self._params, threads)
        else:
            self.network = Network(build_layers(model_name, self._params))

    @property
    def params(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, canonical names -> arrays of ``self.dtype``."""
        return {k: p.copy() for k, p in self._params.items()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace all parameters (copied into the arrays the layers hold, cast to ``self.dtype``)."""
        check_params(self.model_name, params, dtype=None)
        for key, p in self._params.items():
            np.copyto(p, params[key], casting="unsafe")

    def set_dropout_masks(self, masks: list[np.ndarray]) -> None:
        """The masks of the dropout layers, in spec order, for the training steps that
        follow (``models.dropout_masks``: each (N, ...) of its layer's input shape, 0 or
        1 / (1 - rate)); cast to ``self.dtype``. Inference never uses them."""
        dropouts = [layer for layer in getattr(self.network, "network", self.network).layers
                    if isinstance(layer, Dropout | self.lesson.get("Dropout", Dropout))]
        if len(masks) != len(dropouts):
            raise ValueError(f"{self.model_name}: {len(masks)} dropout masks for "
                             f"{len(dropouts)} dropout layers")
        for layer, mask in zip(dropouts, masks, strict=True):
            layer.mask = np.asarray(mask, dtype=self.dtype)

    def _inputs(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim == 3:  # (N, 28, 28) without the channel axis
            x = x[..., None]
        return x, None if y is None else np.asarray(y).astype(np.intp, copy=False)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Inference forward pass: x (N, 28, 28, 1) -> logits (N, 10) of ``self.dtype``."""
        x, _ = self._inputs(x)
        if len(x) == 0:
            return np.zeros((0, models.NUM_CLASSES), dtype=self.dtype)
        return self.network.logits(x)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy of the batch and d(loss)/d(param) for every trainable
        parameter: x (N, 28, 28, 1), y (N,) -> (loss, {canonical name: gradient})."""
        loss, _, grads = self.network.loss_and_grads(*self._inputs(x, y))
        return loss, grads

    def apply(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One optimizer update with learning rate ``lr`` (Keras semantics), in place."""
        self._update({k: np.asarray(g, dtype=self.dtype) for k, g in grads.items()}, lr)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        """One forward, one backward, one update; returns (mean loss, number correct) of the
        batch, both measured before the update."""
        loss, correct, grads = self.network.loss_and_grads(*self._inputs(x, y))
        self._update(grads, lr)
        return loss, correct

    def _update(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """The optimizer's step, and every FLUSH_EVERY updates its first moments' denormal
        values set to zero, as TensorFlow's CPU kernels flush them: the moment of a weight
        that no longer gets a gradient decays by beta_1 a step through the denormal range,
        where x86 arithmetic is many times slower (a cnn step 20% slower after 1,000 Adam
        steps, docs/performance.md), and a denormal moment moves no parameter."""
        self._opt.step(self._params, grads, lr)
        if self._opt.iterations % FLUSH_EVERY == 0:
            for moment in getattr(self._opt, "m", {}).values():
                moment *= np.abs(moment) >= np.finfo(moment.dtype).tiny

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's slots: for Adam ``<param>/m``, ``<param>/v``, ``iterations``;
        only ``iterations`` for SGD."""
        return optimizer_state.state_dict(self._opt)

    def load_optimizer_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state_dict`` returned (slots cast to ``self.dtype``)."""
        shapes = models.param_shapes(self.model_name)
        state = dict(state)
        for key, arr in state.items():
            if key == "iterations":
                continue
            param = key.rsplit("/", 1)[0]
            if param not in shapes or np.shape(arr) != shapes[param]:
                raise ValueError(f"optimizer state {key!r} does not match model {self.model_name}")
            state[key] = np.asarray(arr, dtype=self.dtype)
        optimizer_state.load_state_dict(self._opt, state)
