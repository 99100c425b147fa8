"""SGD and Adam with Keras 3 semantics, updating NumPy arrays in place.

The learning rate is passed to every ``step`` because the schedule lives in the
shared training loop. Arithmetic happens in each parameter's own dtype (float32 in
training), in the same order as ``keras.optimizers`` so both twins round alike.

Their state (``iterations``; Adam's slots ``m`` and ``v``) goes to and from checkpoints
through ``optimizer_state.py``.
"""

from __future__ import annotations

import numpy as np


class SGD:
    """Plain gradient descent (Keras ``SGD(momentum=0)``): ``w -= lr * g``.

    Its only state is ``iterations``, the number of updates, kept as Keras does so
    that checkpoints of both twins hold the same keys."""

    name = "sgd"

    def __init__(self) -> None:
        self.iterations = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update in place every array of ``params`` that has a gradient in ``grads``."""
        for key, p in params.items():
            if key in grads:  # lr as a scalar of the parameter's dtype: float32 stays float32
                p -= grads[key] * p.dtype.type(lr)
        self.iterations += 1



class Adam:
    """Adam exactly as Keras 3 computes it.

    At update t = 1, 2, ... (``iterations`` counts updates, shared by all parameters)::

        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w -= (m * alpha) / (sqrt(v) + epsilon)

    with Keras' defaults beta_1=0.9, beta_2=0.999, epsilon=1e-7. The bias
    correction is folded into alpha, and epsilon is added to the uncorrected
    sqrt(v), as Keras does (not the paper's sqrt(v_hat) + eps).
    """

    name = "adam"

    def __init__(self, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> None:
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.iterations = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update in place every array of ``params`` that has a gradient in ``grads``."""
        t = self.iterations + 1
        for key, p in params.items():
            if key not in grads:
                continue
            g = grads[key]
            if key not in self.m:  # slots are created lazily, zero, like Keras' build()
                self.m[key], self.v[key] = np.zeros_like(p), np.zeros_like(p)
            m, v = self.m[key], self.v[key]
            # Scalars in the parameter's dtype, computed as Keras does (in float32 there);
            # Python floats are weak scalars, so float32 arrays stay float32.
            b1_power, b2_power = p.dtype.type(self.beta_1) ** t, p.dtype.type(self.beta_2) ** t
            alpha = p.dtype.type(lr) * np.sqrt(1 - b2_power) / (1 - b1_power)
            m += (g - m) * (1 - self.beta_1)
            v += (g * g - v) * (1 - self.beta_2)
            p -= (m * alpha) / (np.sqrt(v) + self.epsilon)
        self.iterations = t


def make_optimizer(name: str) -> SGD | Adam:
    """A fresh optimizer by name: "sgd" or "adam" (Keras default hyperparameters)."""
    if name == "sgd":
        return SGD()
    if name == "adam":
        return Adam()
    raise ValueError(f"unknown optimizer {name!r}: expected 'sgd' or 'adam'")
