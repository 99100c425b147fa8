"""The notebook API, re-exported by ``twinnet``: thin wrappers over the modules that do
the work, so a notebook needs one import and no internal names.

Shapes everywhere: images x float32 (N, 28, 28, 1) NHWC in [0, 1]; labels y int (N,)
in 0..9; logits (N, 10). Only ``load_model(..., backend="tf")``, ``train`` with the tf
backend, ``compare`` and ``trace`` import TensorFlow, and only when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from twinnet.comparison import Comparison, compare
from twinnet.data import Mnist, load_mnist
from twinnet.tracing import Trace, trace

if TYPE_CHECKING:
    from twinnet.backend import Backend

__all__ = ["Comparison", "Mnist", "Trace", "compare", "evaluate", "load_mnist", "load_model",
           "save_weights", "trace", "train"]


def load_model(name: str | None = None, backend: str = "numpy", weights: str | os.PathLike | None = None,
               seed: int = 0, optimizer: str = "sgd") -> Backend:
    """Model ``name`` on ``backend`` ("tf" or "numpy"), with the parameters in the
    ``weights`` file (whose ``meta`` names the model, so ``name`` may be left out) or a
    seeded Glorot initialisation.

    The model has ``.params`` (canonical name -> array), ``.logits(x)``: x (N, 28, 28, 1)
    -> (N, 10), ``.loss_and_grads(x, y)`` -> (mean loss, gradients by name) and
    ``.train_step(x, y, lr)``; a model with dropout layers first takes the masks of each
    training batch, ``.set_dropout_masks(twinnet.models.dropout_masks(name, N, seed, step))``.
    """
    from twinnet.backend import load_model as load
    from twinnet.errors import TwinnetError

    if name is None:
        if weights is None:
            raise TwinnetError("load_model needs a model name or a weights file")
        from twinnet.weights import load_weights

        name = load_weights(weights)[1]["model"]
    return load(name, backend, weights=None if weights is None else str(weights), seed=seed,
                optimizer=optimizer)


def train(model: str, backend: str = "numpy", data: Mnist | None = None, progress: bool = True,
          **config: Any) -> tuple[Backend, dict[str, Any]]:
    """Train ``model`` with one twin; returns ``(trained model, metrics)``.

    ``config`` holds the training settings of ``twinnet train`` (``steps``, ``optimizer``,
    ``lr``, ``batch_size``, ``seed``, ``schedule``, ``eval_every``); ``lr`` defaults per
    optimizer. ``data`` defaults to ``load_mnist()``. ``metrics["curves"]`` has the
    learning curves (``twinnet.plots.plot_curves`` draws them), ``metrics["final"]`` the
    loss and accuracy of each split, ``metrics["confusion_matrix"]`` the test one (10x10).
    """
    from twinnet.config import TrainConfig
    from twinnet.training import train as run

    run_config = TrainConfig(model=model, backend=backend, **config)
    return run(run_config, data if data is not None else load_mnist(), progress=progress)


def evaluate(model: Backend, x: np.ndarray | None = None, y: np.ndarray | None = None) -> dict[str, Any]:
    """Loss, accuracy, correct count and confusion matrix (10x10 nested lists; rows = true
    digit) of ``model`` on x (N, 28, 28, 1), y (N,), by default the 10,000 test images."""
    from twinnet.metrics import evaluate as score

    if x is None or y is None:
        test = load_mnist().test
        x, y = test.x, test.y
    return score(model, x, y)


def save_weights(model: Backend, path: str | os.PathLike, **meta: Any) -> None:
    """Write ``model``'s parameters to ``path`` in the canonical .npz format (atomically);
    ``meta`` adds JSON-able entries (the model name and twin are always recorded)."""
    from twinnet.weights import save_weights as save

    save(path, model.model_name, model.params, {"backend": model.backend, **meta})
