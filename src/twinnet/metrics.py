"""Accuracy, cross-entropy and the confusion matrix, computed the same way for both twins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.models import NUM_CLASSES
from twinnet.numpy_nn.losses import log_softmax
from twinnet.util import in_chunks

if TYPE_CHECKING:
    from twinnet.backend import Backend



def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy of logits (N, 10) against labels (N,), computed in float64
    so that the figure does not depend on the twin's dtype."""
    log_probs = log_softmax(logits.astype(np.float64))
    return float(-np.mean(log_probs[np.arange(len(y)), y]))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows of logits (N, 10) whose arg-max equals the label."""
    return float(np.mean(logits.argmax(axis=1) == y))


def confusion_matrix(predicted: np.ndarray, y: np.ndarray) -> np.ndarray:
    """10x10 int64 counts; row = true digit, column = predicted digit."""
    return np.bincount(y * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2).reshape(
        NUM_CLASSES, NUM_CLASSES
    )


class NonFiniteOutputError(TwinnetError):
    """A model whose outputs overflow: its parameters are finite but far too large."""


def predict_logits(model: Backend, x: np.ndarray) -> np.ndarray:
    """Logits (N, 10) for images x (N, 28, 28, 1), ``model.eval_batch`` at a time to bound
    memory. NonFiniteOutputError if any is NaN or infinite (overflow), rather than NaN figures."""
    with np.errstate(over="ignore", invalid="ignore"):
        logits = in_chunks(model.logits, x, model.eval_batch)
    if bad := int(np.count_nonzero(~np.isfinite(logits).all(axis=1))):
        raise NonFiniteOutputError(f"the model's outputs are not finite (overflow) for {bad} of "
                                   f"{len(x)} images; its parameters are too large to use")
    return logits


def evaluate(model: Backend, x: np.ndarray, y: np.ndarray) -> dict:
    """Loss, accuracy, correct count and confusion matrix (as nested lists) on (x, y)."""
    logits = predict_logits(model, x)
    confusion = confusion_matrix(logits.argmax(axis=1), y)
    return {
        "loss": cross_entropy(logits, y),
        "accuracy": accuracy(logits, y),
        "correct": int(np.trace(confusion)),
        "count": int(len(y)),
        "confusion_matrix": confusion.tolist(),
    }
