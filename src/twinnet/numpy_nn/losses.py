"""Softmax cross-entropy from logits, the loss of every model."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of logits (N, K), in their dtype: ``z - logsumexp(z)``.

    The row maximum is subtracted first, so every exp is <= 1, the sum is >= 1 and
    nothing overflows for any finite logits. The one log-sum-exp of the project: the
    loss, the metrics and ``predict`` all go through it.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray,
                          total: int | None = None) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of a batch and its gradient with respect to the logits.

    Shapes: logits (N, K) float, y (N,) integer class labels in 0..K-1.
    Returns ``(loss, dlogits)``: loss = sum_n (logsumexp(logits[n]) - logits[n, y[n]]) / T
    as a Python float, and dlogits (N, K) = (softmax(logits) - onehot(y)) / T in the
    dtype of ``logits``, where T = ``total`` defaults to N (the mean). A batch split into
    parts passes the whole batch's size as ``total``, so the parts' losses and
    gradients add up to the batch's.

    Numerically stable for any finite logits (``log_softmax``).
    """
    total = len(logits) if total is None else total
    rows = np.arange(len(logits))
    log_probs = log_softmax(logits)
    loss = -float(log_probs[rows, y].sum()) / total
    dlogits = np.exp(log_probs)
    dlogits[rows, y] -= 1
    dlogits /= total  # Python int: stays in the logits dtype
    return loss, dlogits
