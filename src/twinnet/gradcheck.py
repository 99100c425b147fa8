"""Gradient checks of the NumPy twin by central finite differences, in float64.

Two levels:

- ``check_layers``: every reference layer alone (Dense, ReLU, Conv2D, MaxPool2D,
  AvgPool2D, Flatten from ``numpy_nn.layers``; Tanh, Sigmoid, LeakyReLU from
  ``numpy_nn.activations``; BatchNorm in training mode and Dropout with a fixed mask
  from ``numpy_nn.normalization``) and the softmax cross-entropy. A layer is checked
  through the scalar
  ``f = sum(forward(x) * upstream)`` with a fixed random ``upstream``, whose gradient
  is exactly what ``backward(upstream)`` returns (dx) and stores (dW, db).
- ``check_model``: a whole model as it trains, ``NumpyModel(dtype=float64)`` on its fast
  path (fused blocks) or, with ``fast=False``, on the reference layers alone,
  ``loss_and_grads`` on a small random batch, against finite differences of the same
  mean loss computed by the same network's forward pass (dropout with fixed masks,
  ``models.dropout_masks``; batch norm on the batch's statistics, as in training).

Numerical derivative: central differences at eps and eps/2 combined by Richardson
extrapolation (``numeric_grad``), eps = 1e-4 for models,
1e-5 for the smooth layers alone and 1e-3 for the piecewise-linear ones (see the
constants below for why); a step
that would cross a ReLU kink or change a max-pool arg-max is detected and replaced
by a one-sided difference (``numeric_grad``). Error of one entry:
``|a - n| / max(|a| + |n|, floor)``, so entries where both are ~0 (e.g. a dead ReLU
unit) count as agreeing; the row reports the maximum over the checked entries and
passes at <= 1e-6. Test data are random normal, so exact kinks and ties have
probability ~0.

Only NumPy and the NumPy twin are imported, never TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from twinnet import models
from twinnet.memory import check_memory
from twinnet.numpy_nn.activations import LeakyReLU, Sigmoid, Tanh
from twinnet.numpy_nn.fast.blocks import ConvActPool, ConvReLUPool, DenseReLU
from twinnet.numpy_nn.fast.layer_blocks import LayerBlock
from twinnet.numpy_nn.layers import AvgPool2D, Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.numpy_nn.model import NumpyModel
from twinnet.numpy_nn.network import Network
from twinnet.numpy_nn.normalization import BatchNorm, Dropout

# 1e-5 rather than 1e-6: the rounding error of f (~1e-16 |f|) divided by eps must stay
# well below 1e-6 of the smaller gradient entries; kinks crossed by the larger step
# are detected and avoided (see numeric_grad).
EPS = 1e-5
# The layers alone are piecewise linear in each of x, W, b, so a central difference
# inside one linear piece is exact whatever the step: a larger step only shrinks the
# rounding error, which otherwise dominates entries that are small by cancellation.
LAYER_EPS = 1e-3
# Whole models take a step of 1e-4: batch norm's cancellations (a mean subtracted from
# values of its size) raise the rounding noise of the loss to several ulps, which a
# larger step divides down, while Richardson extrapolation leaves a truncation error of
# order step**4 (a plain central difference's, ~step**2 * f''' / 6, reached 2e-6 relative
# through batch norm after a dense layer on 4 images); kinks crossed by the step are
# detected and avoided as for any step.
MODEL_EPS = 1e-4
THRESHOLD = 1e-6
DENOMINATOR_FLOOR = 1e-8
# Whole-model checks differentiate the mean loss, f ~ 1, whose rounding error (a few
# ulps of |f|, divided by the step) makes a finite difference noisy at up to ~1e-10
# absolute: through batch norm, whose mean subtraction cancels a conv bias exactly, a
# gradient that is 0 in exact arithmetic measures ~7e-11. So an entry below 1e-4 (an
# input pixel or activation near 0, a bias that batch norm cancels) cannot be resolved
# to a relative 1e-6: below this scale it counts as ~0 and passes when
# |a - n| <= 1e-6 * 1e-4. A wrong gradient still fails on the tensor's larger entries.
MODEL_DENOMINATOR_FLOOR = 1e-4
# Whole-model checks look at this many seeded random entries of each parameter
# (all entries of smaller ones); every parameter tensor is always checked.
ENTRIES_PER_PARAM = 30
MODEL_BATCH = 4


@dataclass(frozen=True)
class GradcheckRow:
    """One checked tensor: ``target`` ("cnn", "layer:Conv2D" ...), ``parameter``
    ("conv1/W", "x", "W" ...), the max relative error and whether it is <= THRESHOLD."""

    target: str
    parameter: str
    max_rel_error: float
    passed: bool


def rel_error(
    analytic: np.ndarray, numeric: np.ndarray, floor: float = DENOMINATOR_FLOOR
) -> float:
    """Max over entries of ``|a - n| / max(|a| + |n|, floor)``; 0.0 for empty input.

    Entries with |a| + |n| below ``floor`` count as ~0: they pass when
    ``|a - n| <= THRESHOLD * floor``.
    """
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), floor)))


def numeric_grad(
    f: Callable[[], float],
    t: np.ndarray,
    index: np.ndarray | None = None,
    pattern: Callable[[], bytes] | None = None,
    eps: float | None = None,
) -> np.ndarray:
    """Finite-difference derivatives of the scalar ``f()`` w.r.t. entries of the array ``t``.

    ``t`` is perturbed in place (and restored), so ``f`` must read it. ``index`` lists
    flat indices to check (default: all); returns their derivatives, in that order.
    ``eps`` defaults to ``EPS``.

    Central differences ``D(h) = (f(t + h) - f(t - h)) / (2 h)`` at h = eps and eps/2,
    combined by Richardson extrapolation, ``(4 D(eps/2) - D(eps)) / 3``: their step**2
    error terms cancel, leaving step**4 (a whole model's truncation error at step 1e-4,
    ~1e-6 relative through batch norm over 4 images, drops below 1e-9). ``pattern()``, if
    given, returns the on/off pattern of the kinks the last ``f()`` went through
    (ReLU masks, max-pool arg-maxes). Where a step changes the pattern, the central
    difference would straddle a kink and mean nothing, so the step is divided by 10,
    and then the second-order one-sided formula on a side s (-1 or +1) that keeps the
    pattern, ``-s (3 f(t) - 4 f(t + s h) + f(t + 2 s h)) / (2 h)``, is tried, at h =
    eps/10 and then eps/100; if every form crosses a kink, the entry is NaN.
    """
    flat = t.reshape(-1)
    if not np.shares_memory(flat, t):
        raise ValueError("numeric_grad perturbs t in place: t must be C-contiguous")
    indices = np.arange(flat.size) if index is None else index
    step = EPS if eps is None else eps

    def at(i: int, value: float) -> tuple[float, bytes | None]:
        flat[i] = value
        return f(), (pattern() if pattern is not None else None)

    # f and the kink pattern at the unperturbed point are the same for every entry.
    # (Without a pattern every step counts as kink-free: central differences only.)
    f_0, p_0 = (f(), pattern()) if pattern is not None else (0.0, None)

    def central(i: int, old: float, h: float) -> float | None:
        """Richardson's combination of the central differences at h and h/2, or None
        if one of the four points lies past a kink."""
        values = []
        for x in (old + h, old - h, old + h / 2, old - h / 2):
            value, p = at(i, x)
            if p != p_0:
                return None
            values.append(value)
        f_plus, f_minus, f_half_plus, f_half_minus = values
        # The step**2 terms of the two central differences cancel.
        return (4 * (f_half_plus - f_half_minus) / h - (f_plus - f_minus) / (2 * h)) / 3

    def one_sided(i: int, old: float, h: float) -> float | None:
        for s in (-1, 1):
            (f_1, p_1), (f_2, p_2) = at(i, old + s * h), at(i, old + 2 * s * h)
            if p_1 == p_0 and p_2 == p_0:
                return -s * (3 * f_0 - 4 * f_1 + f_2) / (2 * h)
        return None

    def derivative(i: int) -> float:
        old = float(flat[i])
        for form, h in ((central, step), (central, step / 10), (one_sided, step / 10),
                        (central, step / 100), (one_sided, step / 100)):
            if (value := form(i, old, h)) is not None:
                return value
        return float("nan")

    out = np.empty(len(indices), dtype=np.float64)
    for k, i in enumerate(indices):
        old = flat[i]
        try:
            out[k] = derivative(int(i))
        finally:
            flat[i] = old
    return out


def kink_pattern(parts: list) -> Callable[[], bytes]:
    """The on/off pattern of every kink in ``parts``' last training forward, as bytes: the
    ReLU masks and max-pool arg-max masks of reference layers and of fused blocks."""

    def masks(part: object) -> list[np.ndarray]:
        if isinstance(part, ConvActPool):  # trains as the blocks of its layers
            return [m for step in part.steps for m in masks(step)]
        if isinstance(part, LayerBlock):  # its kinks are its reference layer's
            part = part.layer
        if isinstance(part, ReLU | LeakyReLU):
            return [part.cache]
        if isinstance(part, MaxPool2D):
            return [part.routing]
        if isinstance(part, ConvReLUPool):
            return [part.cache[1], part.cache[2]]  # arg-max routing, ReLU mask
        if isinstance(part, DenseReLU):
            return [part.positive]
        return []

    def pattern() -> bytes:
        return b"|".join(np.packbits(m).tobytes() for part in parts for m in masks(part))

    return pattern


def _row(
    target: str, parameter: str, analytic: np.ndarray, numeric: np.ndarray,
    floor: float = DENOMINATOR_FLOOR,
) -> GradcheckRow:
    err = rel_error(analytic, numeric, floor)
    return GradcheckRow(target, parameter, err, err <= THRESHOLD)


def _check_layer(target: str, layer: Layer, x: np.ndarray, rng: np.random.Generator,
                 eps: float = LAYER_EPS) -> list[GradcheckRow]:
    """Check dx and (if any) the parameter gradients of ``layer`` at input ``x`` via
    f = sum(out * upstream); ``eps`` EPS for the layers that are not piecewise linear."""
    upstream = rng.standard_normal(layer.forward(x).shape)

    def f() -> float:
        return float(np.sum(layer.forward(x) * upstream))

    pattern = kink_pattern([layer])
    layer.forward(x)
    dx = layer.backward(upstream.copy())
    rows = [_row(target, "x", dx, numeric_grad(f, x, pattern=pattern, eps=eps))]
    grads = layer.grads  # kept: the numerical forwards below overwrite the caches
    for key, p in layer.params.items():
        if key not in grads:  # batch norm's moving statistics: updated, not differentiated
            continue
        numeric = numeric_grad(f, p, pattern=pattern, eps=eps)
        rows.append(_row(target, key.rsplit("/", 1)[1], grads[key], numeric))
    return rows


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random normal values with |v| >= 0.1, so a +-eps step never crosses a ReLU kink."""
    v = rng.standard_normal(shape)
    return np.sign(v) * (0.1 + np.abs(v))


def check_layers(seed: int = 0) -> list[GradcheckRow]:
    """Gradient-check every layer type alone and the softmax cross-entropy, in float64.

    Small shapes: Dense (4, 5) -> (4, 3); ReLU (3, 4, 5); Conv2D (2, 5, 6, 3) -> 4
    channels; MaxPool2D (2, 4, 6, 3); Flatten (2, 3, 4, 2); softmax-CE logits (5, 7);
    AvgPool2D 3x3 stride 2 (overlapping windows) (2, 7, 5, 3); Tanh, Sigmoid (3, 4, 5);
    LeakyReLU alpha 0.2 (3, 4, 5); Dropout rate 0.5 with a fixed mask (4, 6); BatchNorm
    in training mode over dense features (6, 5) and over conv channels (2, 3, 4, 5).
    """
    rng = np.random.default_rng(seed)
    rows: list[GradcheckRow] = []

    dense = Dense("dense", rng.standard_normal((5, 3)), rng.standard_normal(3))
    rows += _check_layer("layer:Dense", dense, rng.standard_normal((4, 5)), rng)

    rows += _check_layer("layer:ReLU", ReLU(), _away_from_zero(rng, (3, 4, 5)), rng)

    conv = Conv2D("conv", rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4))
    rows += _check_layer("layer:Conv2D", conv, rng.standard_normal((2, 5, 6, 3)), rng)

    rows += _check_layer("layer:MaxPool2D", MaxPool2D(), rng.standard_normal((2, 4, 6, 3)), rng)

    rows += _check_layer("layer:Flatten", Flatten(), rng.standard_normal((2, 3, 4, 2)), rng)

    rows += _check_layer("layer:AvgPool2D", AvgPool2D(3, 2), rng.standard_normal((2, 7, 5, 3)), rng)
    rows += _check_layer("layer:Tanh", Tanh(), rng.standard_normal((3, 4, 5)), rng, EPS)
    rows += _check_layer("layer:Sigmoid", Sigmoid(), rng.standard_normal((3, 4, 5)), rng, EPS)
    rows += _check_layer("layer:LeakyReLU", LeakyReLU(0.2), _away_from_zero(rng, (3, 4, 5)), rng)
    dropout = Dropout(0.5)
    dropout.mask = (rng.random((4, 6)) >= 0.5) / 0.5
    rows += _check_layer("layer:Dropout", dropout, rng.standard_normal((4, 6)), rng)
    for shape in ((6, 5), (2, 3, 4, 5)):
        f = shape[-1]
        bn = {"bn/gamma": 1 + 0.5 * rng.standard_normal(f), "bn/beta": rng.standard_normal(f),
              "bn/moving_mean": np.zeros(f), "bn/moving_variance": np.ones(f)}
        rows += _check_layer(f"layer:BatchNorm{'2D' if len(shape) == 4 else ''}", BatchNorm("bn", bn),
                             rng.standard_normal(shape), rng, EPS)

    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, size=5)
    _, dlogits = softmax_cross_entropy(logits, labels)
    numeric = numeric_grad(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    rows.append(_row("layer:SoftmaxCrossEntropy", "logits", dlogits, numeric))
    return rows


def check_model(name: str | tuple, seed: int = 0, fast: bool = True,
                lesson: dict[str, object] | None = None) -> list[GradcheckRow]:
    """Gradient-check every parameter of model ``name`` through ``loss_and_grads``, on the
    fast path or (``fast=False``) the reference layers.

    float64 model from ``init_params(name, seed)`` with small random biases (so the
    bias gradients are checked away from a special point), a batch of MODEL_BATCH
    random-normal images and random labels; up to ENTRIES_PER_PARAM seeded random
    entries of each parameter. One row per parameter, in canonical order.
    """
    check_memory(name, MODEL_BATCH, training=True, paths=("fast" if fast else "reference",),
                 itemsize=8, what=f"gradient check, batch {MODEL_BATCH}, float64")
    rng = np.random.default_rng(seed)
    params = {k: v.astype(np.float64) for k, v in models.init_params(name, seed).items()}
    for key in params:
        if key.endswith("/b"):
            params[key] = 0.1 * rng.standard_normal(params[key].shape)
    fast = fast and not lesson  # a learner's layers (``lesson``) run on the reference path
    model = NumpyModel(name, params, dtype=np.float64, threads=1, fast=fast, lesson=lesson)
    model.set_dropout_masks(models.dropout_masks(name, MODEL_BATCH, seed, step=1))
    x = rng.standard_normal((MODEL_BATCH, *models.IMAGE_SHAPE))
    y = rng.integers(0, models.NUM_CLASSES, size=MODEL_BATCH)
    _, grads = model.loss_and_grads(x, y)
    # The network that computed them (with one part, the fast path runs its fused network).
    network: Network = model.network.network if fast else model.network

    # Perturb the model's own arrays in place: the layers hold them by reference,
    # whereas model.params returns copies.
    live = {key: p for key, p in model._params.items() if key in grads}

    def f() -> float:
        # The same mean loss that loss_and_grads differentiates, through the training
        # forward, which caches the ReLU and max-pool masks that kink_pattern reads.
        return softmax_cross_entropy(network.forward(x, train=True), y)[0]

    rows = []
    for key, p in live.items():
        if p.size <= ENTRIES_PER_PARAM:
            index = np.arange(p.size)
        else:
            index = np.sort(rng.choice(p.size, size=ENTRIES_PER_PARAM, replace=False))
        numeric = numeric_grad(f, p, index, pattern=kink_pattern(network.layers), eps=MODEL_EPS)
        analytic = grads[key].reshape(-1)[index]
        rows.append(_row(models.model_name(name) if isinstance(name, str) else "spec", key, analytic, numeric,
                         MODEL_DENOMINATOR_FLOOR))
    return rows


def format_table(rows: list[GradcheckRow]) -> str:
    """Aligned plain-text table: target, parameter, max relative error, PASS/FAIL."""
    header = ("target", "parameter", "max rel error", "result")
    body = [
        (r.target, r.parameter, f"{r.max_rel_error:.2e}", "PASS" if r.passed else "FAIL")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(w) if i == 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])
