"""What a wrong array's error looks like: a hint for the learner.

``hint`` compares the learner's array with the expected one and names the first shape
of error it recognises: a known mistake of that layer (a candidate array computed the
mistaken way: a flipped kernel, a derivative taken from the input, batch norm without
its mean terms, Adam without bias correction ...), all zeros, a flipped sign, a
constant factor (named where it is a known one: 1/N, 1/k², 1/(1 - rate) ...), a
transpose, or an error confined to where pooling or conv windows overlap, to ties and
kinks, or to entries left at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from twinnet.numpy_nn import layers as lesson
from twinnet.numpy_nn.activations import Sigmoid

CLOSE = 1e-6  # relative: a candidate this close to the learner's array is the mistake made


def close(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not np.isfinite(a).all():
        return False
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-12)
    return float(np.max(np.abs(a - b), initial=0.0)) <= CLOSE * scale


def _size(x: float) -> str:
    return f"{x:.4g}x too large" if abs(x) > 1 else f"{x:.4g}x (1/{1 / x:.4g}) of what it should be"


def _windows_read(case: dict[str, Any]) -> np.ndarray | None:
    """How many windows read each input pixel of a conv or pooling case (x's shape), or None."""
    name, opt, x = case["name"], case["options"], case["x"]
    if name == "Conv2D":
        k, stride = case["params"]["conv/W"].shape[0], opt["stride"]
        if opt["padding"] == "valid":
            rows, cols = (0, 0), (0, 0)
        else:
            rows, cols = (lesson.same_padding(size, k, stride) for size in x.shape[1:3])
        shape = (1, x.shape[1] + sum(rows), x.shape[2] + sum(cols), 1)
    elif name in ("MaxPool2D", "AvgPool2D"):
        k, stride, rows, cols = opt["size"], opt["stride"], (0, 0), (0, 0)
        shape = (1, *x.shape[1:3], 1)
    else:
        return None
    h_out, w_out = (shape[1] - k) // stride + 1, (shape[2] - k) // stride + 1
    counts = lesson.scatter_windows(np.ones((1, h_out, w_out, k, k, 1)), shape, stride)
    counts = counts[:, rows[0]:rows[0] + x.shape[1], cols[0]:cols[0] + x.shape[2]]
    return np.broadcast_to(counts, x.shape)


def _kinks(case: dict[str, Any]) -> np.ndarray | None:
    """Where the layer's input sits on a kink: x == 0 for (leaky) ReLU; the elements of
    max-pool windows whose maximum is tied."""
    x = case["x"]
    if case["name"] in ("ReLU", "LeakyReLU"):
        return x == 0
    if case["name"] == "MaxPool2D":
        size, stride = case["options"]["size"], case["options"]["stride"]
        win = lesson.windows(x, size, stride)
        best = win.max(axis=(3, 4), keepdims=True)
        tied = (win == best).sum(axis=(3, 4), keepdims=True) > 1
        marks = np.broadcast_to(((win == best) & tied).astype(float), win.shape)
        return lesson.scatter_windows(marks, x.shape, stride) > 0
    return None


def _factors(case: dict[str, Any], key: str) -> dict[float, str]:
    """Known constant factors of ``key``'s error in ``case``, with what they mean."""
    name, x = case["name"], case.get("x")
    n = len(x) if x is not None else len(case.get("logits", ()))
    found: dict[float, str] = {}
    if name in ("Dense", "Conv2D") and key.endswith("/b"):
        found[1 / n] = "the bias gradient was averaged over the batch instead of summed"
        if name == "Conv2D":
            m = case["upstream"].size // case["upstream"].shape[-1]
            found[1 / m] = "the bias gradient was averaged over N, H and W instead of summed"
    if name in ("Dense", "Conv2D"):
        found.setdefault(1 / n, "divided by the batch size N: the 1/N of the mean loss is already in "
                                "the upstream gradient")
        found.setdefault(float(n), "multiplied by the batch size N")
    if name == "AvgPool2D":
        k2 = case["options"]["size"] ** 2
        found[float(k2)] = f"the 1/k² of the window mean is missing (k² = {k2})"
        found[1 / k2] = f"the 1/k² of the window mean was applied twice (k² = {k2})"
    if name == "Dropout":
        rate = case["options"]["rate"]
        found[1 - rate] = ("dropout not inverted: the kept units must come out scaled by 1/(1 - rate), "
                           "as the mask's values are")
        found[1 / (1 - rate)] = "scaled by 1/(1 - rate) twice: the mask already holds it"
    if name == "BatchNorm":
        m = x.size // x.shape[-1]
        found[1 / m] = f"averaged over the M = {m} values of each feature instead of summed"
    if name == "softmax_cross_entropy":
        total = case["total"] or n
        found[float(total)] = "the 1/N of the mean loss was not applied"
        found[1 / total] = "the 1/N of the mean loss was applied twice"
        if case["total"]:
            found[total / n] = f"divided by the batch's N = {n} instead of total = {total}"
    return {f: text for f, text in found.items() if abs(f - 1) > 1e-9}


def _candidates(case: dict[str, Any], key: str, expected: dict[str, Any]) -> list[tuple[Callable, str]]:
    """(function giving the mistaken array, hint) for the known mistakes of ``case``'s name."""
    name, x, d = case["name"], case.get("x"), case.get("upstream")
    found: list[tuple[Callable, str]] = []
    if name == "Conv2D" and key in ("out", "conv/W", "dx"):
        W = case["params"]["conv/W"]

        def flipped() -> np.ndarray:
            conv = lesson.Conv2D("conv", W[::-1, ::-1].copy(), case["params"]["conv/b"],
                                 case["options"]["stride"], case["options"]["padding"])
            out = conv.forward(x.copy())
            if key == "out":
                return out
            dx = conv.backward(d)
            return dx if key == "dx" else conv.grads["conv/W"][::-1, ::-1]

        found.append((flipped, "a true convolution (flipped kernel) instead of a cross-correlation: "
                               "out[i, j] reads W[p, q] at x[i*s + p, j*s + q], the kernel as it is"))
    if name == "MaxPool2D" and key == "dx":
        size, stride = case["options"]["size"], case["options"]["stride"]

        def everywhere() -> np.ndarray:
            share = np.broadcast_to(d[:, :, :, None, None], (*d.shape[:3], size, size, d.shape[3]))
            return lesson.scatter_windows(share, x.shape, stride)

        found.append((everywhere, "the max-pool gradient went to every element of the window: it "
                                  "belongs to the window's maximum alone"))
    if name == "Tanh" and key == "dx":
        found.append((lambda: d * (1 - x**2), "tanh's derivative taken from the input: 1 - a**2 needs "
                                              "the output a = tanh(x), not x"))
    if name == "Sigmoid" and key == "dx":
        found.append((lambda: d * x * (1 - x), "sigmoid's derivative taken from the input: a * (1 - a) "
                                               "needs the output a = sigmoid(x), not x"))
        found.append((lambda: d * Sigmoid().forward(x) * (1 - x),
                      "sigmoid's derivative mixes the input and the output: a * (1 - a), a = sigmoid(x)"))
    if name == "BatchNorm":
        found += _batchnorm_candidates(case, key, expected)
    if name == "Dropout" and key == "out" and not case["train"]:
        rate = case["options"]["rate"]
        found.append((lambda: x * (1 - rate), "inverted dropout leaves inference alone: out = x "
                                              "(the scaling happens in training)"))
    if name == "softmax_cross_entropy" and key == "dlogits":
        total = case["total"] or len(case["logits"])
        found.append((lambda: expected["dlogits"] + _onehot(case) / total,
                      "the one-hot of the labels was not subtracted: dlogits = (softmax - onehot(y)) / N"))
    if name == "Adam" and key.startswith("snapshot"):
        found.append((lambda: _adam_without_correction(case), "Adam without bias correction: at step t, "
                      "alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)"))
    return found


def _onehot(case: dict[str, Any]) -> np.ndarray:
    out = np.zeros_like(case["logits"])
    out[np.arange(len(out)), case["y"]] = 1
    return out


def _batchnorm_candidates(case: dict[str, Any], key: str, expected: dict[str, Any]) -> list:
    x, d, opt, params = case["x"], case.get("upstream"), case["options"], case["params"]
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    m = x.size // x.shape[-1]
    inv_std = 1 / np.sqrt(var + opt["epsilon"])
    gamma = params["bn/gamma"]
    found: list = []
    if key == "dx":
        xhat = (x - mean) * inv_std
        found.append((lambda: gamma * inv_std * d, "batch norm's backward without its mean terms: the "
                      "batch's mean and variance depend on x too, dx = gamma / sqrt(var + eps) / M * "
                      "(M * d - dbeta - xhat * dgamma)"))
        found.append((lambda: gamma * inv_std * (d - d.mean(axis=axes)), "batch norm's backward without "
                      "the variance's term, - xhat * dgamma / M"))
        found.append((lambda: gamma * inv_std * (d - (d * xhat).mean(axis=axes) * xhat),
                      "batch norm's backward without the mean's term, - dbeta / M"))
    if key.startswith("bn/moving"):
        stat = mean if key.endswith("mean") else var
        old, mom = params[key], opt["momentum"]
        found.append((lambda: old, f"{key.rsplit('/', 1)[1]} not updated: training moves it, moving = "
                                   "moving * momentum + batch statistic * (1 - momentum)"))
        found.append((lambda: old * (1 - mom) + stat * mom, f"{key.rsplit('/', 1)[1]}: momentum and "
                      "1 - momentum swapped; moving = moving * momentum + statistic * (1 - momentum)"))
        if key.endswith("variance"):
            found.append((lambda: old * mom + var * m / max(m - 1, 1) * (1 - mom),
                          "moving_variance from the unbiased variance: batch norm uses the biased one "
                          "(divided by M, not M - 1)"))
    if key == "out" and not case["train"]:
        found.append((lambda: gamma * (x - mean) * inv_std + params["bn/beta"],
                      "inference normalised with the batch's statistics: it uses the moving ones"))
    if key == "out" and case["train"]:
        found.append((lambda: gamma * (x - mean) / np.sqrt(var * m / max(m - 1, 1) + opt["epsilon"])
                      + params["bn/beta"], "normalised by the unbiased variance: batch norm uses the "
                      "biased one (divided by M, not M - 1)"))
    return found


def _adam_without_correction(case: dict[str, Any]) -> dict[str, list]:
    opt = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, **case["options"]}
    params = {k: v.copy() for k, v in case["params"].items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    snapshots = []
    for grads, lr in zip(case["grads"], case["lrs"], strict=True):
        for key, g in grads.items():
            m[key] += (g - m[key]) * (1 - opt["beta_1"])
            v[key] += (g * g - v[key]) * (1 - opt["beta_2"])
            params[key] -= lr * m[key] / (np.sqrt(v[key]) + opt["epsilon"])
        snapshots.append({k: p.copy() for k, p in params.items()})
    return {"snapshots": snapshots}


def hint(case: dict[str, Any], key: str, label: str, actual: np.ndarray, wanted: np.ndarray,
         expected: dict[str, Any], tol: float, candidate: Callable[[], np.ndarray] | None = None) -> str:
    """A hint for ``actual`` where ``wanted`` was expected ("" when nothing fits).

    ``key`` names the array as the case does ("out", "dx", "conv/W", "dlogits",
    "snapshot a/W 2" ...), ``label`` as the learner reads it (``dW``); ``expected`` is
    the lesson's whole answer for the case (for candidates built from it)."""
    a, e = np.asarray(actual, np.float64), np.asarray(wanted, np.float64)
    for make, text in _candidates(case, key, expected):
        try:
            mistaken = make()
        except (ValueError, IndexError, KeyError):
            continue
        if isinstance(mistaken, dict):  # an optimizer's run: this step's array
            _, param, step = key.split(" ")
            mistaken = mistaken["snapshots"][int(step)][param] - case["params"][param]
        if close(a, mistaken):
            return text
    if a.shape != e.shape:
        if a.ndim == 2 and a.shape == e.shape[::-1] and close(a.T, e):
            return f"{label} is transposed: it has shape {e.shape} ({_transpose_text(case, key)})"
        return ""
    scale = float(np.max(np.abs(e), initial=0.0))
    if scale == 0 or not np.isfinite(a).all():
        return ""
    if not a.any():
        return f"{label} is all zeros: nothing flows back"
    if close(a, -e):
        return f"{label} has its sign flipped"
    factor = float(np.vdot(a, e) / np.vdot(e, e))
    if close(a, factor * e) and abs(factor - 1) > 1e-6:
        known = _factors(case, key)
        reason = next((text for f, text in known.items() if abs(factor / f - 1) < 1e-6), "")
        return f"{label} is {_size(factor)}{': ' + reason if reason else ''}"
    if a.ndim == 2 and a.shape[0] == a.shape[1] and close(a.T, e):
        return f"{label} is transposed ({_transpose_text(case, key)})"
    wrong = np.abs(a - e) > tol * scale
    # Ties before overlaps: in an overlapping max pool the tied elements lie where windows
    # overlap too, and the narrower explanation is the likelier one.
    kinks = _kinks(case) if key == "dx" else None
    if kinks is not None and not (wrong & ~kinks).any():
        if case["name"] == "MaxPool2D":
            return ("wrong only at ties: a window's gradient goes to one element, its first maximum "
                    "in row-major order, as TensorFlow routes it")
        return ("wrong only at the kink x == 0: there the slope is taken from the x < 0 side "
                "(x > 0 passes the gradient, x == 0 does not), as TensorFlow does")
    reads = _windows_read(case) if key == "dx" else None
    if reads is not None and (reads > 1).any() and not (wrong & (reads <= 1)).any():
        return ("wrong only where windows overlap (stride < kernel): a pixel read by several windows "
                "gets the sum of their gradients (add, +=, rather than assign)")
    if not (wrong & (a != 0)).any():
        return f"zeros where values belong ({int(wrong.sum())} of {a.size} entries)"
    return ""


def _transpose_text(case: dict[str, Any], key: str) -> str:
    if case["name"] == "Dense" and key.endswith("/W"):
        return "dW = x.T @ dz has W's shape (n_in, n_out)"
    if case["name"] == "Dense" and key == "dx":
        return "dx = dz @ W.T has x's shape (N, n_in)"
    return "check the order of the matrix product"
