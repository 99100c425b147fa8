"""Softmax cross-entropy from logits, the loss of every model."""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of a batch and its gradient with respect to the logits.

    Shapes: logits (N, K) float, y (N,) integer class labels in 0..K-1.
    Returns ``(loss, dlogits)``: loss = mean_n (logsumexp(logits[n]) - logits[n, y[n]])
    as a Python float, and dlogits (N, K) = (softmax(logits) - onehot(y)) / N in the
    dtype of ``logits``.

    Numerically stable for any finite logits: the row maximum is subtracted before
    exponentiating, so every exp is <= 1 and the log-sum-exp cannot overflow.
    """
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    # log p(y) = shifted[y] - log(sum exp(shifted)); shifted has a 0 in each row, so
    # sum_exp >= 1 and the log is finite.
    log_prob_y = shifted[rows, y] - np.log(sum_exp[:, 0])
    loss = -float(log_prob_y.mean())
    dlogits = exp
    dlogits /= sum_exp
    dlogits[rows, y] -= 1
    dlogits /= n  # Python int: stays in the logits dtype
    return loss, dlogits
