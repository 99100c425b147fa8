"""The NumPy twin: the four models trained by hand-derived backpropagation.

Imports NumPy and ``twinnet.models`` only, never TensorFlow, so it works where
TensorFlow is absent.
"""

from twinnet.numpy_nn.layers import Conv2D, ConvReLUPool, Dense, Flatten, MaxPool2D, ReLU
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.numpy_nn.network import NumpyModel
from twinnet.numpy_nn.optimizers import SGD, Adam, make_optimizer

__all__ = [
    "Adam",
    "Conv2D",
    "ConvReLUPool",
    "Dense",
    "Flatten",
    "MaxPool2D",
    "NumpyModel",
    "ReLU",
    "SGD",
    "make_optimizer",
    "softmax_cross_entropy",
]
