"""The seam between the shared training loop and the two twins.

A backend holds one model (its parameters and its optimizer state) and offers
the few operations the loop, metrics, report and CLI need. Neither twin is
imported here, so ``twinnet`` imports without TensorFlow.

Shapes: ``x`` is float32 (N, 28, 28, 1) with pixels in [0, 1], NHWC; ``y`` is
integer labels (N,) in 0..9; logits are float32 (N, 10). Parameter dicts map
canonical names (``dense1/W`` ...) to NumPy arrays in the canonical layouts of
``twinnet.models.param_shapes``.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol

import numpy as np

from twinnet.environment import install_command
from twinnet.errors import TwinnetError
from twinnet.memory import INFERENCE_BATCH, check_memory, path_of
from twinnet.models import get_spec, init_params
from twinnet.weights import WeightsError, check_params, load_weights

BACKENDS = ("tf", "numpy")
OPTIMIZERS = ("sgd", "adam")


class Backend(Protocol):
    """What either twin offers; see the module docstring for shapes."""

    backend: str  # "tf" or "numpy"
    model_name: str  # one of twinnet.models.MODEL_NAMES, or a spec file's path
    optimizer: str  # "sgd" or "adam"
    eval_batch: int  # images ``metrics.predict_logits`` hands ``logits`` at a time

    @property
    def params(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, canonical names -> float32 arrays; batch norm's
        non-trainable moving statistics included."""
        ...

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace all parameters (checked against the spec by the caller)."""
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Forward pass: x (N, 28, 28, 1) -> logits (N, 10)."""
        ...

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean softmax cross-entropy on the batch and its gradient for every trainable
        parameter (``twinnet.models.is_trainable``), through the training forward: batch
        norm uses the batch's statistics and updates its moving ones, as Keras does."""
        ...

    def apply(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One optimizer update with learning rate ``lr`` (Keras semantics)."""
        ...

    def set_dropout_masks(self, masks: list[np.ndarray]) -> None:
        """The masks the dropout layers apply in the training passes that follow
        (``loss_and_grads``, ``train_step``), one per dropout layer in spec order, as
        ``twinnet.models.dropout_masks`` draws them: (N, ...) of the layer's input shape,
        0 or 1 / (1 - rate). The masks are an input, so both twins drop the same units;
        a twin never draws its own. Inference (``logits``) runs without dropout."""
        ...

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        """loss_and_grads then apply, fused where the twin can; returns the batch's
        mean loss and number of correct predictions, both measured before the update."""
        ...

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's slots (for Adam: ``<param>/m``, ``<param>/v`` and ``iterations``)."""
        ...

    def load_optimizer_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state_dict`` returned."""
        ...


def load_model(
    name: str,
    backend: str = "numpy",
    weights: str | None = None,
    seed: int = 0,
    optimizer: str = "sgd",
    threads: int | None = None,
    reference: bool = False,
    lesson: dict[str, object] | None = None,
) -> Backend:
    """Build model ``name`` on ``backend`` ("tf" or "numpy").

    Parameters come from the ``weights`` file (canonical .npz) if given, else from
    ``twinnet.models.init_params(name, seed)``, so both twins start from the very
    same arrays for the same seed. ``threads`` (default: as the process is set up) is
    the NumPy twin's thread count, or TensorFlow's intra-op thread count
    (``set_tensorflow_threads``); a run's rounding depends on it. ``reference`` runs the
    NumPy twin on its reference layers alone, without the fast path; ``lesson`` on those
    layers with some replaced by a learner's (``numpy_nn.model.NumpyModel``).
    """
    get_spec(name)  # fail early on an unknown model name
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    # Every command that builds a model infers with it (evaluation, predictions, probes):
    # refused here, before any array of it is allocated, if that cannot fit.
    check_memory(name, INFERENCE_BATCH, training=False, paths=(path_of(backend, reference),),
                 optimizer=optimizer)
    if weights is not None:
        params, _meta = load_weights(weights, expected_model=name)
    else:
        params = init_params(name, seed)
    check_params(name, params)
    if backend == "numpy":
        from twinnet.numpy_nn import NumpyModel

        model: Backend = NumpyModel(name, params, optimizer=optimizer, threads=threads, fast=not reference,
                                     lesson=lesson)
    else:
        tf_nn = import_tf_nn(alternative="or use the NumPy twin, --backend numpy")
        if threads is not None:
            set_tensorflow_threads(threads)
        model = tf_nn.TFModel(name, params, optimizer=optimizer, seed=seed)
    if weights is not None:
        check_outputs(model, weights)
    return model


def probe_images() -> np.ndarray:
    """float32 (3, 28, 28, 1): a blank image, a full one and a fixed random one."""
    noise = np.random.default_rng(0).random((28, 28, 1), dtype=np.float32)
    return np.stack([np.zeros((28, 28, 1), np.float32), np.ones((28, 28, 1), np.float32), noise])


def check_outputs(model: Backend, source: str | os.PathLike) -> None:
    """WeightsError naming ``source`` unless the model's logits on ``probe_images`` are
    finite. Weights that pass ``check_params`` (finite) can still be so large (3e38) that
    every output overflows; such a file is refused at load rather than giving NaN
    figures. ``metrics.predict_logits`` checks the outputs of real images too."""
    with np.errstate(over="ignore", invalid="ignore"):
        logits = np.asarray(model.logits(probe_images()))
    if not np.isfinite(logits).all():
        raise WeightsError(f"{source}: the weights give non-finite outputs (overflow: values too "
                           f"large, up to {max_magnitude(model):.3g}); they cannot be used")


def max_magnitude(model: Backend) -> float:
    return max(float(np.max(np.abs(value), initial=0.0)) for value in model.params.values())


def tf_missing(alternative: str = "") -> str:
    """The one line saying TensorFlow is missing and how to add it to this installation;
    ``alternative`` (``"or use the NumPy twin, --backend numpy"``) where the caller has one."""
    hint = f" ({alternative})" if alternative else ""
    return f"this needs TensorFlow, which is not installed: {install_command('tf')}{hint}"


def import_tf_nn(alternative: str = ""):  # noqa: ANN201 (the twinnet.tf_nn module)
    """``twinnet.tf_nn``, or TwinnetError with the one-line install hint (``tf_missing``)
    where TensorFlow or Keras is missing (an install without the tf extra)."""
    try:
        import twinnet.tf_nn as tf_nn
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("tensorflow", "keras"):
            raise
        raise TwinnetError(tf_missing(alternative)) from None
    return tf_nn


def set_tensorflow_threads(threads: int) -> None:
    """Run TensorFlow's ops on ``threads`` intra-op threads, one op at a time (inter-op 1).

    TensorFlow takes these only before it runs its first op in the process: a worker
    process calls this before its first TF job. When TensorFlow already runs here with
    its defaults (a library caller that used it first), this warns on stderr and goes on;
    when it runs with other explicit counts, this raises TwinnetError, as the run would
    not round as its twin on another worker does.
    """
    threading = import_tf_nn().tf.config.threading  # as the twin imports it: op determinism
    current = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
    if current == (threads, 1):
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        if current != (0, 0):
            raise TwinnetError(f"TensorFlow already runs in this process with {current[0]} intra-op "
                               f"threads; cannot switch to {threads} for this run") from None
        print(f"twinnet: warning: TensorFlow already runs in this process with its default thread "
              f"counts, not {threads}; its rounding may differ from a fresh process's", file=sys.stderr)
