"""`twinnet exercise`: the skeleton made from the lesson, the grader on the lesson, on a
correct learner's file and on a gallery of typical mistakes, and `--layers`."""

from __future__ import annotations

import ast
import inspect
import json
import time
from pathlib import Path

import numpy as np
import pytest

from twinnet.cli import main
from twinnet.exercise.grader import grade
from twinnet.exercise.names import NAMES
from twinnet.exercise.skeleton import skeleton
from twinnet.numpy_nn.network import LESSON

SOLUTION = Path(__file__).with_name("exercise_solution.py")
# A file that defines the 14 names as the lesson's own.
LESSON_FILE = """\
from twinnet.numpy_nn.activations import LeakyReLU, Sigmoid, Tanh
from twinnet.numpy_nn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.numpy_nn.normalization import BatchNorm, Dropout
from twinnet.numpy_nn.optimizers import SGD, Adam
"""

# (id, name, [(old, new) edits of the correct solution], expected status, words of the message)
MISTAKES = [
    ("bias-averaged", "Dense", [('np.einsum("no->o", dz)', 'np.einsum("no->o", dz) / len(dz)')],
     "fail", "averaged over the batch instead of summed"),
    ("dW-divided-by-N", "Dense", [('np.einsum("ni,no->io", self.x, dz)', 'np.einsum("ni,no->io", self.x, dz) / len(dz)')],
     "fail", "divided by the batch size N"),
    ("dW-transposed", "Dense", [('np.einsum("ni,no->io", self.x, dz)', 'np.einsum("ni,no->oi", self.x, dz)')],
     "fail", "transposed"),
    ("loss-without-1/N", "softmax_cross_entropy", [("((p - onehot) / t)", "(p - onehot)")],
     "fail", "the 1/N of the mean loss was not applied"),
    ("loss-1/N-twice", "softmax_cross_entropy", [("((p - onehot) / t)", "((p - onehot) / t / t)")],
     "fail", "the 1/N of the mean loss was applied twice"),
    ("sgd-sign-flipped", "SGD", [("params[key] -= np.asarray(lr", "params[key] += np.asarray(lr")],
     "fail", "sign flipped"),
    ("conv-dx-not-accumulated", "Conv2D", [("dxp[:, rows, cols] += ", "dxp[:, rows, cols] = ")],
     "fail", "wrong only where windows overlap"),
    ("conv-flipped-kernel", "Conv2D", [('z += np.einsum("nijc,co->nijo", patch, self.W[p, q])',
                                        'z += np.einsum("nijc,co->nijo", patch, self.W[k - 1 - p, k - 1 - q])')],
     "fail", "a true convolution (flipped kernel)"),
    ("maxpool-to-every-element", "MaxPool2D", [("+= d * (self.where == p * k + q)", "+= d")],
     "fail", "went to every element of the window"),
    ("maxpool-last-of-ties", "MaxPool2D", [("better = v > best", "better = v >= best")],
     "fail", "wrong only at ties"),
    ("avgpool-without-1/k2", "AvgPool2D", [("+= d / (k * k)", "+= d")],
     "fail", "the 1/k² of the window mean is missing"),
    ("tanh-from-input", "Tanh", [("return d - d * self.a * self.a", "return d - d * self.x * self.x")],
     "fail", "tanh's derivative taken from the input"),
    ("sigmoid-from-input", "Sigmoid", [("return d * (self.a - self.a * self.a)", "return d * (self.x - self.x * self.x)")],
     "fail", "sigmoid's derivative taken from the input"),
    ("relu-gradient-at-zero", "ReLU", [("self.on = (x > 0)", "self.on = (x >= 0)")],
     "fail", "wrong only at the kink x == 0"),
    ("batchnorm-without-mean-terms", "BatchNorm",
     [("return (dxhat - dxhat.mean(axis=axes) - self.xhat * (dxhat * self.xhat).mean(axis=axes)) / self.sd",
       "return dxhat / self.sd")],
     "fail", "without its mean terms"),
    ("moving-statistics-not-updated", "BatchNorm",
     [("            self.moving_mean *= self.momentum\n            self.moving_mean += (1 - self.momentum) * mu\n", "")],
     "fail", "moving_mean not updated"),
    ("adam-without-bias-correction", "Adam",
     [("step = lr * np.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)", "step = lr")],
     "fail", "Adam without bias correction"),
    ("dropout-not-inverted", "Dropout", [("return x * self.mask.astype(x.dtype) if train else x",
                                          "return x * (self.mask > 0) if train else x"),
                                         ("return d * self.mask.astype(d.dtype)", "return d * (self.mask > 0)")],
     "fail", "dropout not inverted"),
    ("crash", "Flatten", [("return d.reshape(self.shape)", "return d.reshape(self.shap)")],
     "error", "AttributeError"),
    ("endless-loop", "LeakyReLU", [("return d * self.slope", "while True:\n            pass")],
     "timeout", "no answer within"),
]


def mistaken(mistake: tuple) -> str:
    """The solution with ``mistake``'s edits, each of which must apply exactly once."""
    text = SOLUTION.read_text()
    for old, new in mistake[2]:
        assert text.count(old) == 1, f"{mistake[0]}: {old!r} appears {text.count(old)} times"
        text = text.replace(old, new)
    return text
