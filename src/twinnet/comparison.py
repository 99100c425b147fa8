"""``twinnet compare``: both twins, the same weights, the same batch, layer by layer.

The NumPy side runs the reference layers (``twinnet.numpy_nn.layers``, one per spec
layer, read next to docs/derivations.md); the TF side runs the same Keras layers of
``twinnet.tf_nn.build_network`` as a functional model that returns every layer's
output, under a ``tf.GradientTape`` that also watches the input. Both take the mean
softmax cross-entropy of the batch and go backward to the image, so each layer has an
output a (N, ...), the gradient flowing into it from above g = dL/da (N, ...), and,
for layers with parameters, their gradients (dL/dW, dL/db; batch norm's dL/dgamma,
dL/dbeta). This training-mode pass applies the same dropout masks in both twins
(``models.dropout_masks`` of the seed, step 0) and batch norm's batch statistics, whose
updated moving statistics are compared too; an inference-mode forward (no dropout,
batch norm on the moving statistics) compares every layer's output once more. The
NumPy network that trains (``NumpyModel``: the fast path, or with ``reference`` the
reference layers) is checked against TF as well, on its loss and parameter gradients.

Differences, per layer:

- activation: max |a_numpy - a_tf| / max(1, max |a_tf|), an absolute difference for
  activations up to 1 and a relative one above;
- gradients (dL/da, dL/dW, dL/db): relative error max |g_numpy - g_tf| / max |g_tf|,
  as in tests/test_twins_agree.py (a bias that batch norm cancels is shown, not judged:
  ``cancelled_biases``);
- loss: |loss_numpy - loss_tf| / |loss_tf|.

Tolerances (TOLERANCES), the same for every model:

=========  ==========  ==========  =======
dtype      activation  gradient    loss
=========  ==========  ==========  =======
float32    1e-4        1e-3        1e-5
float64    1e-10       1e-8        1e-12
=========  ==========  ==========  =======

float32 matches the twin-agreement tests; float64 is five to seven orders tighter, as
float64 rounding allows (measured errors are near 1e-15). ``twinnet compare`` exits
with 1 when any difference exceeds its tolerance and names the layer. A float32
comparison that fails also measures each twin against the NumPy twin's float64 pass
(``float64_anchor``), to say whose rounding the difference is: through batch norm,
TensorFlow's float32 gradients are off by up to ~0.6 relative (Keras folds the
normalisation into x * scale + offset, whose gradient cancels) where the NumPy twin's,
from x-hat, stay near 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from twinnet import models
from twinnet.errors import TwinnetError

TWIN_NAMES = {"numpy": "NumPy twin", "tf": "TF twin"}
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"activation": 1e-4, "gradient": 1e-3, "loss": 1e-5},
    "float64": {"activation": 1e-10, "gradient": 1e-8, "loss": 1e-12},
}
DTYPES = tuple(TOLERANCES)
# compare and trace are checks: both default to float64, the tighter tolerances.
DEFAULT_DTYPE = "float64"

# Sections of docs/derivations.md, by layer kind (GitHub's heading anchors).
DERIVATIONS = "docs/derivations.md"
SECTIONS: dict[str, str] = {
    "loss": "1-softmax-cross-entropy-bar-z--s---yn",
    "dense": "2-dense-layer",
    "relu": "3-relu",
    "conv": "4-convolution-cross-correlation-nhwc--hwio",
    "maxpool": "5-max-pooling-2x2-stride-2",
    "flatten": "6-flatten",
    "avgpool": "8-average-pooling",
    "tanh": "9-tanh",
    "sigmoid": "10-sigmoid",
    "leaky_relu": "11-leaky-relu",
    "dropout": "12-dropout",
    "batchnorm": "13-batch-normalisation",
}
KINDS = {models.DenseSpec: "dense", models.Conv2DSpec: "conv", models.ReLUSpec: "relu",
         models.MaxPool2DSpec: "maxpool", models.FlattenSpec: "flatten",
         models.AvgPool2DSpec: "avgpool", models.TanhSpec: "tanh", models.SigmoidSpec: "sigmoid",
         models.LeakyReLUSpec: "leaky_relu", models.DropoutSpec: "dropout",
         models.BatchNormSpec: "batchnorm"}



def layer_names(model_name: str) -> list[tuple[str, str]]:
    """(name, kind) of every spec layer in order: parameter layers keep their spec name
    (``conv1``), the others are numbered per kind (``relu1``, ``maxpool2``, ``flatten1``)."""
    counts: dict[str, int] = {}
    named = []
    for spec in models.get_spec(model_name):
        kind = KINDS[type(spec)]
        counts[kind] = counts.get(kind, 0) + 1
        named.append((getattr(spec, "name", None) or f"{kind}{counts[kind]}", kind))
    return named


@dataclass
class TwinPass:
    """One twin's forward and backward pass over a batch of N images.

    ``outputs[i]`` is layer i's output (N, ...) and ``grad_outputs[i]`` dL/d(outputs[i]);
    ``grad_input`` is dL/dx (N, 28, 28, 1), the saliency; ``param_grads`` maps canonical
    names (``conv1/W``) to gradients; ``logits`` is (N, 10) and ``loss`` the batch mean.
    """

    loss: float
    logits: np.ndarray
    outputs: list[np.ndarray]
    grad_outputs: list[np.ndarray]
    grad_input: np.ndarray
    param_grads: dict[str, np.ndarray]
    moving: dict[str, np.ndarray] = field(default_factory=dict)  # batch norm's, after the pass


def pass_masks(model_name: str, n: int, masks: list[np.ndarray] | None) -> list[np.ndarray]:
    """``masks``, else those of step 0 of seed 0 (``models.dropout_masks``)."""
    return models.dropout_masks(model_name, n, 0, 0) if masks is None else masks


def numpy_pass(model_name: str, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
               dtype: str = "float64", masks: list[np.ndarray] | None = None,
               lesson: dict[str, object] | None = None, training: bool = True) -> TwinPass:
    """The NumPy twin's reference layers forward and backward on x (N, 28, 28, 1), y (N,),
    through the twin's one run loop (``Network.loss_and_grads``), recording every layer.
    Training mode: dropout applies ``masks`` (default: ``pass_masks``), batch norm the
    batch's statistics (its updated moving ones are returned in ``moving``). With
    ``training=False``, the model as it infers (``trace``): no dropout (masks of ones) and
    batch norm frozen on its moving statistics (``BatchNorm.frozen``), which stay as they are.
    ``lesson``: a learner's classes in place of some of the lesson's (``network.build_layers``)."""
    from twinnet.numpy_nn.network import reference_network

    cast = {k: np.array(v, dtype=dtype) for k, v in params.items()}  # copies: batch norm updates
    network, record = reference_network(model_name, cast, lesson), {}
    specs = models.get_spec(model_name)
    dropouts = [layer for layer, spec in zip(network.layers, specs, strict=True)
                if isinstance(spec, models.DropoutSpec)]
    if not training:
        masks = [np.ones((len(x), *shape.inp)) for shape in models.walk(model_name)
                 if isinstance(shape.layer, models.DropoutSpec)]
        for layer, spec in zip(network.layers, specs, strict=True):
            if isinstance(spec, models.BatchNormSpec):
                layer.frozen = True
    for layer, mask in zip(dropouts, pass_masks(model_name, len(x), masks), strict=True):
        layer.mask = np.asarray(mask, dtype=dtype)
    loss, _, grads = network.loss_and_grads(np.asarray(x, dtype=dtype), np.asarray(y, dtype=np.intp),
                                            record=record)
    moving = {k: v for k, v in cast.items() if not models.is_trainable(k)}
    return TwinPass(loss, record["outputs"][-1], record["outputs"], record["grad_outputs"],
                    record["grad_input"], grads, moving)


def numpy_inference(model_name: str, params: dict[str, np.ndarray], x: np.ndarray,
                    dtype: str = "float64", lesson: dict[str, object] | None = None) -> list[np.ndarray]:
    """Every layer's output of the NumPy twin's reference layers in inference mode
    (no dropout, batch norm on its moving statistics)."""
    from twinnet.numpy_nn.network import reference_network

    cast = {k: np.array(v, dtype=dtype) for k, v in params.items()}
    record: dict = {}
    reference_network(model_name, cast, lesson).forward(np.asarray(x, dtype=dtype), False, record)
    return record["outputs"]


def tf_pass(model_name: str, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
            dtype: str = "float64", masks: list[np.ndarray] | None = None,
            training: bool = True) -> TwinPass:
    """The TF twin's Keras layers forward and backward (``tf.GradientTape``) on the same
    batch, in training mode (as ``numpy_pass``) or, ``training=False``, inference mode;
    imports TensorFlow (TwinnetError naming the extra if it is missing)."""
    from twinnet.backend import import_tf_nn

    tf_nn = import_tf_nn()
    import keras
    import tensorflow as tf

    network, variables = tf_nn.build_network(model_name, dtype)
    for name, var in variables.items():
        var.assign(np.asarray(params[name], dtype=dtype))
    tf_nn.set_dropout_masks(network, pass_masks(model_name, len(x), masks))
    every_output = keras.Model(network.inputs, [layer.output for layer in network.layers])
    x_t = tf.convert_to_tensor(np.asarray(x, dtype=dtype))
    names = [name for name in variables if models.is_trainable(name)]
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        outputs = every_output(x_t, training=training)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.convert_to_tensor(np.asarray(y, dtype=np.int64)), logits=outputs[-1]))
    grads = tape.gradient(loss, [*outputs, x_t, *(variables[n] for n in names)])
    n_layers = len(outputs)
    return TwinPass(
        loss=float(loss), logits=outputs[-1].numpy(), outputs=[o.numpy() for o in outputs],
        grad_outputs=[g.numpy() for g in grads[:n_layers]], grad_input=grads[n_layers].numpy(),
        param_grads={n: g.numpy() for n, g in zip(names, grads[n_layers + 1:], strict=True)},
        moving={n: v.numpy() for n, v in variables.items() if not models.is_trainable(n)})


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


def activation_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max(1, max |reference|)."""
    return max_abs_diff(ours, reference) / max(1.0, float(np.max(np.abs(reference), initial=0.0)))


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference| (the twin-agreement tests' measure)."""
    return max_abs_diff(ours, reference) / max(float(np.max(np.abs(reference), initial=0.0)), 1e-30)


def cancelled_biases(model_name: str) -> set[str]:
    """The biases that a batch norm right after their layer cancels (``conv1/b`` of
    conv1 -> bn1): their gradient is 0 in exact arithmetic (derivations, section 13), so
    each twin's is rounding noise of its own, shown but not held to a tolerance."""
    spec = models.get_spec(model_name)
    return {f"{layer.name}/b" for layer, after in zip(spec, spec[1:], strict=False)
            if isinstance(after, models.BatchNormSpec) and hasattr(layer, "name")}


@dataclass
class LayerDiff:
    """One layer's differences between the twins (see the module docstring)."""

    name: str
    kind: str
    output_shape: list[int]
    activation: float
    grad_output: float
    params: dict[str, float] = field(default_factory=dict)  # "W"/"b"/"gamma"... -> gradient rel. error
    failed: list[str] = field(default_factory=list)  # what exceeded its tolerance


@dataclass
class Comparison:
    """``compare``'s result; ``passed`` is False when any difference exceeds tolerance."""

    model: str
    dtype: str
    batch: int
    data: str  # where the batch came from
    weights: str  # the weights file, or "seeded init (seed S)"
    tolerances: dict[str, float]
    layers: list[LayerDiff]
    loss: dict[str, float]  # numpy, tf, numpy_network
    network: dict[str, float]  # the NumpyModel that trains vs TF: logits, loss and each parameter
    failures: list[str]
    # Inference mode (no dropout, batch norm on moving statistics): each layer's activation
    # difference; and batch norm's moving statistics after the training pass.
    inference: dict[str, float] = field(default_factory=dict)
    moving: dict[str, float] = field(default_factory=dict)
    # A float32 comparison that fails: each twin's largest gradient error against the
    # NumPy twin's float64 pass, which tells whose rounding the difference is.
    anchor: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def __str__(self) -> str:
        return format_comparison(self)


def diff_passes(model_name: str, ours: TwinPass, tf: TwinPass,
                tolerance: dict[str, float]) -> tuple[list[LayerDiff], list[str]]:
    """Per-layer differences of two passes and the failures, as ``"conv1: W gradient
    relative error 3e-01 > 1e-08"`` lines."""
    rows, failures = [], []
    cancelled = cancelled_biases(model_name)
    for i, (name, kind) in enumerate(layer_names(model_name)):
        row = LayerDiff(name, kind, list(ours.outputs[i].shape[1:]),
                        activation_diff(ours.outputs[i], tf.outputs[i]),
                        relative_error(ours.grad_outputs[i], tf.grad_outputs[i]))
        checks = [("activation", "activation difference", row.activation),
                  ("gradient", "dL/d(output) relative error", row.grad_output)]
        for key in (k for k in tf.param_grads if k.rsplit("/", 1)[0] == name):
            p = key.rsplit("/", 1)[1]
            row.params[p] = relative_error(ours.param_grads[key], tf.param_grads[key])
            if key not in cancelled:
                checks.append(("gradient", f"{p} gradient relative error", row.params[p]))
        for tol_key, label, value in checks:
            if not value <= tolerance[tol_key]:  # NaN fails too
                row.failed.append(label)
                failures.append(f"{name}: {label} {value:.1e} > {tolerance[tol_key]:.0e}")
        rows.append(row)
    return rows, failures


def test_batch(batch: int, seed: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """x (batch, 28, 28, 1) float32 and y (batch,): the first ``batch`` MNIST test images
    when the files are there (never downloaded here), else a seeded uniform-random batch.
    A ``data_dir`` given explicitly must hold MNIST."""
    from twinnet.data import DataError, default_data_dir, load_mnist, locate

    try:
        locate(data_dir if data_dir is not None else default_data_dir(), fetch=False)
    except DataError:
        if data_dir is not None:
            raise
    else:
        test = load_mnist(data_dir).test
        if not 1 <= batch <= len(test):
            raise TwinnetError(f"--batch must be between 1 and {len(test)}, got {batch}")
        return test.x[:batch], test.y[:batch], f"the first {batch} MNIST test images"
    rng = np.random.default_rng([seed, 2])
    x = rng.uniform(0, 1, (batch, *models.IMAGE_SHAPE)).astype(np.float32)
    y = rng.integers(0, models.NUM_CLASSES, batch)
    return x, y, f"{batch} seeded random images (seed {seed}; no MNIST files found)"


def model_params(model: str | None, weights: str | None, seed: int,
                 check: Callable[[str], None] = lambda model: None) -> tuple[str, dict[str, np.ndarray], str]:
    """(model name, params, description): from ``weights`` (its meta names the model, which
    must match ``model`` if given), else ``init_params(model, seed)``; ``check(model)`` runs
    before the model's arrays are built (the memory check)."""
    from twinnet.weights import load_weights

    if weights is not None:
        params, meta = load_weights(weights, expected_model=model)
        check(meta["model"])
        return meta["model"], params, str(weights)
    if model is None:
        raise TwinnetError("name a model, or give --weights")
    models.get_spec(model)
    check(model)
    return model, models.init_params(model, seed), f"seeded init (seed {seed})"


def check_pass_memory(model: str, batch: int, dtype: str, paths: tuple[str, ...]) -> None:
    """``memory.check_memory`` of the passes compare and trace run: training passes of
    ``batch`` images in ``dtype`` on each of ``paths``."""
    from twinnet.memory import check_memory

    check_memory(model, batch, training=True, paths=paths, itemsize=np.dtype(dtype).itemsize,
                 what=f"both twins on a batch of {batch}, {dtype}")


def inference_diffs(model: str, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, dtype: str,
                    masks: list[np.ndarray], tolerance: dict[str, float],
                    failures: list[str], lesson: dict[str, object] | None = None,
                    ) -> tuple[dict[str, float], np.ndarray]:
    """Inference mode (no dropout, batch norm on the moving statistics): each layer's
    activation difference by name, and TF's logits; failures are appended."""
    inference = {}
    their_outputs = tf_pass(model, params, x, y, dtype, masks, training=False).outputs
    for (name, _), a, b in zip(layer_names(model), numpy_inference(model, params, x, dtype, lesson),
                               their_outputs, strict=True):
        inference[name] = activation_diff(a, b)
        if not inference[name] <= tolerance["activation"]:
            failures.append(f"inference: {name}: activation difference {inference[name]:.1e} "
                            f"> {tolerance['activation']:.0e}")
    return inference, their_outputs[-1]


def network_diffs(model: str, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, dtype: str,
                  masks: list[np.ndarray], theirs: TwinPass, their_logits: np.ndarray, reference: bool,
                  failures: list[str], lesson: dict[str, object] | None = None,
                  ) -> tuple[dict[str, float], float]:
    """The NumPy network that trains (the fast path, or the reference layers), on the same
    batch, against the same TF pass: its logits, loss and gradient differences, and its
    loss; failures are appended."""
    from twinnet.numpy_nn import NumpyModel

    tolerance = TOLERANCES[dtype]
    network = NumpyModel(model, params, dtype=dtype, fast=not reference, lesson=lesson)
    network.set_dropout_masks(masks)
    net_logits = network.logits(x)  # before the training pass updates batch norm's statistics
    net_loss, net_grads = network.loss_and_grads(x, y)
    net = {"logits": activation_diff(net_logits, their_logits),
           "loss": abs(net_loss - theirs.loss) / abs(theirs.loss),
           **{k: relative_error(g, theirs.param_grads[k]) for k, g in net_grads.items()}}
    for label, value, tol_key in [("training network: logits difference", net["logits"], "activation"),
                                  ("training network: loss relative difference", net["loss"], "loss"),
                                  *((f"training network: {k} gradient relative error", net[k], "gradient")
                                    for k in net_grads if k not in cancelled_biases(model))]:
        if not value <= tolerance[tol_key]:
            failures.append(f"{label} {value:.1e} > {tolerance[tol_key]:.0e}")
    return net, net_loss


def compare(model: str | None = None, weights: str | None = None, batch: int = 64,
            dtype: str = DEFAULT_DTYPE, seed: int = 0, data_dir: str | None = None,
            x: np.ndarray | None = None, y: np.ndarray | None = None,
            reference: bool = False, lesson: dict[str, object] | None = None) -> Comparison:
    """Run both twins on one batch with the same weights, forward and backward, and
    compare them layer by layer.

    ``model`` may be left out when ``weights`` names it. The batch is ``x`` (N, 28, 28, 1)
    and ``y`` (N,) if given, else the first ``batch`` MNIST test images (a seeded random
    batch where MNIST is absent). Returns a ``Comparison``; ``.passed`` tells whether every
    difference is within ``TOLERANCES[dtype]``, ``.layers`` has one row per spec layer.
    The network that trains is compared as a whole too: the fast path, or with
    ``reference`` the reference layers as ``NumpyModel`` runs them. ``lesson`` puts a
    learner's classes in place of some of the lesson's (``twinnet exercise``), beside
    TensorFlow's layers. Imports TensorFlow.
    """
    if dtype not in TOLERANCES:
        raise TwinnetError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch < 1:
        raise TwinnetError(f"--batch must be at least 1, got {batch}")
    paths = ("reference", "tf") if reference else ("reference", "fast", "tf")
    model, params, source = model_params(
        model, weights, seed, lambda name: check_pass_memory(name, len(x) if x is not None else batch,
                                                             dtype, paths))
    if x is None or y is None:
        x, y, data = test_batch(batch, seed, data_dir)
    else:
        data = f"{len(x)} given images"
    tolerance = TOLERANCES[dtype]
    masks = models.dropout_masks(model, len(x), seed, 0)
    theirs = tf_pass(model, params, x, y, dtype, masks)
    ours = numpy_pass(model, params, x, y, dtype, masks, lesson)
    rows, failures = diff_passes(model, ours, theirs, tolerance)
    moving = {k: relative_error(v, theirs.moving[k]) for k, v in ours.moving.items()}
    failures += [f"{k} after the training pass: relative error {v:.1e} > {tolerance['activation']:.0e}"
                 for k, v in moving.items() if not v <= tolerance["activation"]]
    inference, their_logits = inference_diffs(model, params, x, y, dtype, masks, tolerance, failures,
                                             lesson)
    loss_error = abs(ours.loss - theirs.loss) / abs(theirs.loss)
    if not loss_error <= tolerance["loss"]:
        failures.append(f"loss relative difference {loss_error:.1e} > {tolerance['loss']:.0e}")
    net, net_loss = network_diffs(model, params, x, y, dtype, masks, theirs, their_logits, reference,
                                  failures, lesson)
    anchor = {}
    if failures and dtype == "float32":
        anchor = float64_anchor(model, params, x, y, masks, ours, theirs)
    return Comparison(model, dtype, len(x), data, source, tolerance, rows,
                      {"numpy": ours.loss, "tf": theirs.loss, "numpy_network": net_loss},
                      net, failures, inference, moving, anchor)


def float64_anchor(model: str, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                   masks: list[np.ndarray], ours: TwinPass, theirs: TwinPass) -> dict[str, float]:
    """Each float32 twin's largest relative error, over the parameter gradients and the
    gradients into each layer, against the NumPy twin's float64 pass on the same batch
    (biases that batch norm cancels left out)."""
    exact = numpy_pass(model, params, x, y, "float64", masks)
    cancelled = cancelled_biases(model)
    pairs = [(key, g) for key, g in exact.param_grads.items() if key not in cancelled]
    return {twin: max([relative_error(p.param_grads[key], g) for key, g in pairs]
                      + [relative_error(d, g)
                         for d, g in zip(p.grad_outputs, exact.grad_outputs, strict=True)])
            for twin, p in (("numpy", ours), ("tf", theirs))}


def format_comparison(result: Comparison) -> str:
    """The per-layer table and the losses as text."""
    tol = result.tolerances
    cancelled = cancelled_biases(result.model)
    width = max([10, *(len(row.name) for row in result.layers)])
    lines = [f"{models.model_name(result.model)} ({result.dtype}) on {result.data}; "
             f"weights: {result.weights}",
             f"tolerances: activation {tol['activation']:.0e}, gradients {tol['gradient']:.0e} "
             f"(relative), loss {tol['loss']:.0e} (relative)",
             "",
             f"{'layer':<{width}} {'output shape':<14} {'act max|Δ|':>11} {'dL/dout rel':>12} "
             f"{'dW|dγ rel':>11} {'db|dβ rel':>11}"]
    for row in result.layers:
        shape = "x".join(map(str, row.output_shape))
        # A batch norm's gamma and beta take the columns of a weight and a bias.
        params = [f"{row.params[p]:>11.1e}" if p in row.params else
                  f"{row.params[q]:>11.1e}" if q in row.params else f"{'':>11}"
                  for p, q in (("W", "gamma"), ("b", "beta"))]
        if f"{row.name}/b" in cancelled:
            params[1] += "*"
        lines.append(f"{row.name:<{width}} {shape:<14} {row.activation:>11.1e} {row.grad_output:>12.1e} "
                     f"{params[0]} {params[1]}".rstrip() + ("  FAIL" if row.failed else ""))
    if cancelled:
        lines.append("* a bias that the batch norm right after its layer cancels: its gradient is 0 in "
                     "exact arithmetic, so each twin's is rounding noise; shown, not judged")
    loss = result.loss
    lines += ["",
              f"loss: NumPy {loss['numpy']:.10g}  TF {loss['tf']:.10g}  "
              f"(NumPy network that trains {loss['numpy_network']:.10g})",
              "NumPy network that trains vs TF: logits {:.1e}, gradients max rel err {:.1e}".format(
                  result.network["logits"],
                  max(v for k, v in result.network.items() if "/" in k and k not in cancelled)),
              f"inference mode (no dropout, batch norm's moving statistics): activations max "
              f"difference {max(result.inference.values(), default=0.0):.1e}"]
    if result.moving:
        lines.append(f"batch norm's moving statistics after the training pass: max rel err "
                     f"{max(result.moving.values()):.1e}")
    if result.passed:
        lines.append("PASS: every difference is within tolerance")
    else:
        lines += [f"FAIL: {failure}" for failure in result.failures]
    if result.anchor:
        worse = max(result.anchor, key=result.anchor.get)
        lines.append(f"against the NumPy twin's float64 pass, the largest gradient error is "
                     f"{result.anchor['numpy']:.1e} for the NumPy twin and {result.anchor['tf']:.1e} "
                     f"for TensorFlow: the difference is mostly the {TWIN_NAMES[worse]}'s float32 rounding")
    return "\n".join(lines)

