"""twinnet: four MNIST classifiers trained twice, by TensorFlow and by hand-derived NumPy.

``twinnet.load_model(name, backend="tf"|"numpy", weights=None, seed=0)`` builds a model
with ``.params``, ``.logits(x)`` and ``.loss_and_grads(x, y)``; see ``twinnet.backend``.
Importing this package never imports TensorFlow.
"""

__version__ = "0.1.0"

from twinnet.backend import load_model  # noqa: E402

__all__ = ["__version__", "load_model"]
