"""The NumPy twin: the four models trained by hand-derived backpropagation.

- ``layers``: the reference layers, one per section of docs/derivations.md;
- ``kernels``: measured fast primitives (im2col, bias, ReLU, pooling);
- ``blocks``: the fused blocks the network runs, built from the kernels;
- ``network``: ``NumpyModel``, one list of blocks from a model's spec;
- ``losses``, ``optimizers``: softmax cross-entropy, Keras-exact SGD and Adam.

Imports NumPy and ``twinnet`` modules that never import TensorFlow, so it works where
TensorFlow is absent.
"""

from twinnet.numpy_nn.losses import log_softmax, softmax_cross_entropy
from twinnet.numpy_nn.network import NumpyModel
from twinnet.numpy_nn.optimizers import SGD, Adam, make_optimizer

__all__ = ["Adam", "NumpyModel", "SGD", "log_softmax", "make_optimizer", "softmax_cross_entropy"]
