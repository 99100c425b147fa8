"""twinnet: four MNIST classifiers trained twice, by TensorFlow and by hand-derived NumPy.

The notebook API (``twinnet.api``)::

    data = twinnet.load_mnist()                   # .train/.validation/.test: x (N, 28, 28, 1), y (N,)
    model, metrics = twinnet.train("mlp128", backend="numpy", steps=500)
    twinnet.evaluate(model)                        # test loss, accuracy, confusion matrix
    twinnet.save_weights(model, "mlp128.npz")
    model = twinnet.load_model(weights="mlp128.npz", backend="tf")
    twinnet.compare("mlp128", weights="mlp128.npz")   # both twins, layer by layer
    twinnet.trace("mlp128.npz", index=0)              # one digit forward and backward

The API's names are loaded on first use (a module ``__getattr__``), so ``import twinnet``
or of any of its modules loads nothing else; the API itself imports neither TensorFlow
nor matplotlib until a function needs them. The training loop is ``twinnet.training``.
"""

from twinnet.version import __version__

API = ("compare", "evaluate", "load_mnist", "load_model", "save_weights", "trace", "train")
__all__ = ["__version__", *API]


def __getattr__(name: str):  # noqa: ANN202 (an API function)
    if name not in API:
        raise AttributeError(f"module 'twinnet' has no attribute {name!r}")
    from twinnet import api

    value = getattr(api, name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
