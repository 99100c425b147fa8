"""twinnet: four MNIST classifiers trained twice, by TensorFlow and by hand-derived NumPy.

The notebook API (``twinnet.api``)::

    data = twinnet.load_mnist()                   # .train/.validation/.test: x (N, 28, 28, 1), y (N,)
    model, metrics = twinnet.train("mlp128", backend="numpy", steps=500)
    twinnet.evaluate(model)                        # test loss, accuracy, confusion matrix
    twinnet.save_weights(model, "mlp128.npz")
    model = twinnet.load_model(weights="mlp128.npz", backend="tf")
    twinnet.compare("mlp128", weights="mlp128.npz")   # both twins, layer by layer
    twinnet.trace("mlp128.npz", index=0)              # one digit forward and backward

Importing this package never imports TensorFlow, nor matplotlib. The training loop
itself is ``twinnet.training``.
"""

__version__ = "0.1.0"

# The API modules import NumPy and twinnet's own modules only (TensorFlow and matplotlib
# are imported inside the functions that need them), so this import stays cheap.
from twinnet.api import (  # noqa: E402
    compare,
    evaluate,
    load_mnist,
    load_model,
    save_weights,
    trace,
    train,
)

__all__ = ["__version__", "compare", "evaluate", "load_mnist", "load_model", "save_weights",
           "trace", "train"]
