"""Elementwise activations besides ReLU (``layers.py``), any shape, no parameters; each
backward uses what its forward kept (derivations, sections 9-11)."""

from __future__ import annotations

import numpy as np

from twinnet.numpy_nn.layers import NoParams


class Tanh(NoParams):
    """``a = tanh(x)`` (derivations, section 9). Backward: dx = d * (1 - a**2)."""

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        a = np.tanh(x)
        if train:
            self.cache = a
        return a

    def backward(self, d: np.ndarray) -> np.ndarray:
        return d * (1 - self.cache**2)


class Sigmoid(NoParams):
    """``a = 1 / (1 + exp(-x))`` (derivations, section 10), computed as (1 + tanh(x/2)) / 2,
    which cannot overflow. Backward: dx = d * a * (1 - a)."""

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        a = 0.5 * (1 + np.tanh(0.5 * x))
        if train:
            self.cache = a
        return a

    def backward(self, d: np.ndarray) -> np.ndarray:
        return d * self.cache * (1 - self.cache)


class LeakyReLU(NoParams):
    """``x`` where x > 0, else ``alpha * x`` (derivations, section 11). Backward: dx = d
    where x > 0, else alpha * d (the slope at 0 is alpha, as in TensorFlow)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self.cache = x > 0
        return np.where(x > 0, x, x * self.alpha)

    def backward(self, d: np.ndarray) -> np.ndarray:
        return np.where(self.cache, d, d * self.alpha)
