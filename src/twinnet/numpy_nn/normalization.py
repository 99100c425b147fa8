"""Batch normalisation and dropout: the two layers that train differently from how
they infer (derivations, sections 12 and 13); forward/backward pairs as in ``layers.py``."""

from __future__ import annotations

import numpy as np

from twinnet.numpy_nn.layers import NoParams


class Dropout(NoParams):
    """Inverted dropout with a given mask (derivations, section 12).

    Training: out = x * mask, ``mask`` of x's shape (N, ...) holding 0 (dropped) or
    1 / (1 - rate) (kept). The mask is an input, set before each training step from the
    run's seed (``models.dropout_masks``), so that both twins drop the same units.
    Inference: out = x. Backward: dx = d * mask.
    """

    def __init__(self, rate: float) -> None:
        self.rate, self.mask = rate, None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train:
            return x
        if self.mask is None or self.mask.shape != x.shape:
            raise ValueError(f"dropout in training needs a mask of shape {x.shape}: set_dropout_masks")
        return x * self.mask.astype(x.dtype, copy=False)

    def backward(self, d: np.ndarray) -> np.ndarray:
        return d * self.mask.astype(d.dtype, copy=False)


def feature_sum(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last, (F,), in a's dtype but accumulated in float64: a
    float32 running sum over the M = N*H*W values of a feature would lose ~M * 6e-8."""
    return a.sum(axis=tuple(range(a.ndim - 1)), dtype=np.float64).astype(a.dtype)


class BatchNorm:
    """Batch normalisation of each feature, the last axis (derivations, section 13).

    Shapes: x (N, F) or (N, H, W, F); gamma, beta, moving_mean, moving_variance (F,).
    Training: mean and biased variance of each feature over its M = N (*H*W) values,
    xhat = (x - mean) / sqrt(var + eps), out = gamma * xhat + beta; the moving statistics
    are updated in place as Keras does, moving = moving * momentum + stat * (1 - momentum).
    Inference uses them in place of the batch's. Backward, summing over the M values:
    dgamma = sum(d * xhat), dbeta = sum(d), dx = gamma / sqrt(var + eps) / M * (M * d
    - dbeta - xhat * dgamma).

    ``frozen`` (``trace``: gradients of the model as it infers): a training forward then
    normalises with the moving statistics, leaves them as they are and keeps what the
    backward needs; the layer is then a fixed affine map per feature, so dx = d * gamma /
    sqrt(moving_variance + eps), with dgamma and dbeta as above.
    """

    frozen = False

    def __init__(self, name: str, params: dict[str, np.ndarray], momentum: float = 0.99,
                 epsilon: float = 1e-3) -> None:
        self.name, self.momentum, self.epsilon = name, momentum, epsilon
        keys = ("gamma", "beta", "moving_mean", "moving_variance")
        self.params = {f"{name}/{key}": params[f"{name}/{key}"] for key in keys}
        self.gamma, self.beta, self.moving_mean, self.moving_variance = self.params.values()
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train and not self.frozen:
            m = x.size // x.shape[-1]
            mean = feature_sum(x) / m
            var = feature_sum((x - mean) ** 2) / m
            self.update_moving_statistics(mean, var)
        else:
            mean, var = self.moving_mean, self.moving_variance
        inv_std = 1 / np.sqrt(var + self.epsilon)
        xhat = (x - mean) * inv_std
        if train:
            self.cache = (xhat, inv_std)
        return xhat * self.gamma + self.beta

    def update_moving_statistics(self, mean: np.ndarray, var: np.ndarray) -> None:
        """moving = moving * momentum + stat * (1 - momentum), in place, for the batch's
        mean and variance (F,)."""
        for moving, stat in ((self.moving_mean, mean), (self.moving_variance, var)):
            moving[...] = moving * self.momentum + stat * (1 - self.momentum)

    def backward(self, d: np.ndarray) -> np.ndarray:
        xhat, inv_std = self.cache
        m = d.size // d.shape[-1]
        dgamma, dbeta = feature_sum(d * xhat), feature_sum(d)
        self.grads = {f"{self.name}/gamma": dgamma, f"{self.name}/beta": dbeta}
        if self.frozen:  # the statistics are constants: no gradient flows through them
            return d * (self.gamma * inv_std)
        return self.gamma * inv_std / m * (m * d - dbeta - xhat * dgamma)
