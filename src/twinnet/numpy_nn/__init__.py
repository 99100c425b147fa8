"""The NumPy twin: any model of ``twinnet.models`` trained by hand-derived backpropagation.

The lesson, to read next to docs/derivations.md: ``layers``, ``activations`` and
``normalization`` (one class per section), ``losses``, ``optimizers`` and ``network``
(runs any list of layers). ``model`` holds ``NumpyModel``, what the training loop
trains; its default fast path is ``fast/``.

Imports NumPy and ``twinnet`` modules that never import TensorFlow, so it works where
TensorFlow is absent.
"""

from twinnet.numpy_nn.losses import log_softmax, softmax_cross_entropy
from twinnet.numpy_nn.model import NumpyModel
from twinnet.numpy_nn.optimizers import SGD, Adam, make_optimizer

__all__ = ["Adam", "NumpyModel", "SGD", "log_softmax", "make_optimizer", "softmax_cross_entropy"]
