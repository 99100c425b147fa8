"""The cases each of the 14 names is graded on, and ``run_cases``, which runs an
implementation (the learner's, in a child process, or the lesson's, for the expected
values) on them and returns plain arrays.

Cases are float64 and seeded, chosen to expose the usual mistakes: batch 1 and odd
batches, odd image sizes; for conv and pooling strides 1 to 3, kernels 1 to 5 and both
paddings, so that windows overlap and leave remainders; inputs with exact zeros and
ties; batch norm and dropout in training and inference; large logits for the loss;
several optimizer steps with changing learning rates. One float32 case per name checks
that float32 in gives float32 out.

A layer case is checked through ``f = sum(forward(x) * upstream)``, whose gradients are
what ``backward(upstream)`` returns and stores (as in ``twinnet.gradcheck``); the
finite differences are ``gradcheck.numeric_grad``'s, of the learner's own forward.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from twinnet.gradcheck import EPS, LAYER_EPS, kink_pattern, numeric_grad
from twinnet.numpy_nn.network import LESSON

# Entries of each array checked by finite differences (seeded; all of smaller arrays):
# each costs four forwards, and a learner's forward may loop over pixels in Python. The
# comparison with the lesson covers every entry.
FD_ENTRIES = 24
# Layers whose forward has kinks: finite differences follow the lesson layer's kink
# pattern (ReLU masks, max-pool arg-maxes), as gradcheck does, so at an exact zero or a
# tie they take the one-sided difference of the side TensorFlow's convention picks.
KINKED = {"ReLU", "LeakyReLU", "MaxPool2D"}
SMOOTH = {"Tanh", "Sigmoid", "BatchNorm", "softmax_cross_entropy"}
MOVING = ("moving_mean", "moving_variance")
LAYERS = ("Dense", "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "Flatten", "Conv2D", "MaxPool2D",
          "AvgPool2D", "Dropout", "BatchNorm")
OPTIMIZERS = ("SGD", "Adam")


class NotImplementedByLearnerError(Exception):
    """A body of the learner's still raises NotImplementedError."""


def zeros_and_ties(rng: np.random.Generator, shape: tuple[int, ...], ties: bool = False) -> np.ndarray:
    """Random normal values with about 15% exact zeros; with ``ties``, rounded to halves,
    so that pooling windows hold equal maxima."""
    v = rng.standard_normal(shape)
    if ties:
        v = np.round(v * 2) / 2
    v[rng.random(shape) < 0.15] = 0.0
    return v


def layer_case(name: str, label: str, x: np.ndarray, rng: np.random.Generator, options: dict | None = None,
               params: dict[str, np.ndarray] | None = None, train: bool = True, fd: bool = True,
               mask: np.ndarray | None = None) -> dict[str, Any]:
    """One case of layer ``name``: its constructor options and parameters, the input x,
    the upstream gradient (of the output's shape, drawn from the lesson's forward)."""
    case = {"kind": "layer", "name": name, "label": label, "x": x, "options": options or {},
            "params": params or {}, "train": train, "fd": fd and train, "mask": mask}
    out = forward_of(make_layer(LESSON[name], case, copy.deepcopy(case["params"])), case)
    case["upstream"] = rng.standard_normal(np.shape(out))
    return case


def forward_of(layer: Any, case: dict[str, Any]) -> np.ndarray:
    return layer.forward(case["x"].copy(), case["train"])


def make_layer(cls: Any, case: dict[str, Any], params: dict[str, np.ndarray]) -> Any:
    """Build ``cls`` (the learner's or the lesson's) for ``case`` over ``params``, as
    ``numpy_nn.network.build_layers`` builds it."""
    name, opt = case["name"], case["options"]
    if name in ("Dense", "Conv2D"):
        extra = (opt["stride"], opt["padding"]) if name == "Conv2D" else ()
        layer = cls(opt["layer"], params[f"{opt['layer']}/W"], params[f"{opt['layer']}/b"], *extra)
    elif name in ("MaxPool2D", "AvgPool2D"):
        layer = cls(opt["size"], opt["stride"])
    elif name == "LeakyReLU":
        layer = cls(opt["alpha"])
    elif name == "Dropout":
        layer = cls(opt["rate"])
        if case["mask"] is not None:
            layer.mask = case["mask"].copy()
    elif name == "BatchNorm":
        layer = cls(opt["layer"], params, opt["momentum"], opt["epsilon"])
    else:
        layer = cls()
    return layer


def _entries(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.arange(size) if size <= FD_ENTRIES else np.sort(rng.choice(size, FD_ENTRIES, replace=False))


def as_array(value: Any) -> np.ndarray:
    """The learner's answer as an array; any other answer (None, a list ...) as a 0-d
    object array holding its type's name, which the grader reports as a wrong type (the
    object itself may not survive the trip back from the child process)."""
    if isinstance(value, np.ndarray | np.generic | float | int) and not isinstance(value, bool):
        return np.array(value, copy=True)
    box = np.empty((), dtype=object)
    box[()] = type(value).__name__
    return box


def trainable(case: dict[str, Any]) -> list[str]:
    """The keys of the case's parameters that have gradients (not batch norm's moving statistics)."""
    return [k for k in case["params"] if k.rsplit("/", 1)[1] not in MOVING]


def run_layer_case(cls: Any, case: dict[str, Any], fd: bool, reference: Any = None) -> dict[str, Any]:
    """Forward (and, in training, backward) of ``cls`` on ``case``; with ``fd``, the
    finite differences of its own forward, following ``reference``'s kink pattern."""
    params = copy.deepcopy(case["params"])
    layer = make_layer(cls, case, params)
    x = case["x"].copy()
    result: dict[str, Any] = {"out": as_array(layer.forward(x, case["train"]))}
    modified = [] if np.array_equal(x, case["x"]) else ["x"]
    if case["train"]:
        d = case["upstream"].copy()
        result["dx"] = as_array(layer.backward(d))
        grads = getattr(layer, "grads", None) or {}
        result["grads"] = {k: as_array(v) for k, v in grads.items()} if isinstance(grads, dict) else {}
        modified += [] if np.array_equal(d, case["upstream"]) else ["the upstream gradient"]
        modified += [] if np.array_equal(x, case["x"]) else ["x"]
        result["moving"] = {k: params[k].copy() for k in params if k.rsplit("/", 1)[1] in MOVING}
        # What the layer holds as its moving statistics, to tell a rebinding from no update.
        result["moving_attr"] = {k: as_array(getattr(layer, k.rsplit("/", 1)[1], None))
                                 for k in result["moving"]}
    result["modified"] = sorted(set(modified))
    out = result["out"]
    # Finite differences of a forward whose output cannot be an answer (a list, the wrong
    # shape) mean nothing: the forward check reports it.
    if fd and case["fd"] and out.dtype.kind == "f" and out.shape == case["upstream"].shape:
        result["fd"] = _finite_differences(cls, case, reference)
    return result


def _finite_differences(cls: Any, case: dict[str, Any], reference: Any) -> dict[str, tuple]:
    """key ("dx" for x, or a parameter) -> (flat indices, numeric derivatives of sum(forward * upstream))."""
    rng = np.random.default_rng(len(case["label"]) + case["x"].size)
    params = copy.deepcopy(case["params"])
    layer = make_layer(cls, case, params)
    kinked = case["name"] in KINKED and reference is not None
    ref = make_layer(reference, case, params) if kinked else None
    x = case["x"].copy()
    upstream = case["upstream"]
    pattern = kink_pattern([ref]) if kinked else None

    def f() -> float:
        out = layer.forward(x, True)
        if ref is not None:
            ref.forward(x, True)
        return float(np.sum(np.asarray(out, dtype=np.float64) * upstream))

    eps = EPS if case["name"] in SMOOTH else LAYER_EPS
    found = {}
    for key, array in [("dx", x), *((k, params[k]) for k in trainable(case))]:
        index = _entries(rng, array.size)
        found[key] = (index, numeric_grad(f, array, index, pattern=pattern, eps=eps))
    return found


def run_loss_case(fn: Any, case: dict[str, Any], fd: bool) -> dict[str, Any]:
    logits = case["logits"].copy()
    args = (logits, case["y"].copy()) + ((case["total"],) if case["total"] is not None else ())
    answer = fn(*args)
    if not isinstance(answer, tuple | list) or len(answer) != 2:
        raise TypeError(f"softmax_cross_entropy returned {type(answer).__name__}, not (loss, dlogits)")
    loss, dlogits = answer
    result = {"loss": as_array(loss), "dlogits": as_array(dlogits),
              "modified": [] if np.array_equal(logits, case["logits"]) else ["logits"]}
    if fd and case["fd"]:
        z = case["logits"].copy()
        index = _entries(np.random.default_rng(z.size), z.size)

        def f() -> float:
            return float(fn(z, case["y"], *((case["total"],) if case["total"] is not None else ()))[0])

        result["fd"] = {"dlogits": (index, numeric_grad(f, z, index, eps=EPS))}
    return result


def run_optimizer_case(cls: Any, case: dict[str, Any]) -> dict[str, Any]:
    params = copy.deepcopy(case["params"])
    given = dict(params)  # the arrays the model holds: an update must change them in place
    opt = cls(**case["options"])
    snapshots, iterations = [], []
    for grads, lr in zip(case["grads"], case["lrs"], strict=True):
        opt.step(params, copy.deepcopy(grads), lr)
        snapshots.append({k: a.copy() for k, a in given.items()})
        iterations.append(as_array(getattr(opt, "iterations", None)))
    rebound = sorted(k for k in given if params.get(k) is not given[k])
    return {"snapshots": snapshots, "iterations": iterations, "rebound": rebound}


def run_cases(obj: Any, cases: list[dict[str, Any]], fd: bool = False, reference: Any = None) -> list[dict]:
    """Run implementation ``obj`` of a name on every case; NotImplementedByLearnerError where a
    body still raises NotImplementedError."""
    results = []
    for case in cases:
        try:
            if case["kind"] == "layer":
                results.append(run_layer_case(obj, case, fd, reference))
            elif case["kind"] == "loss":
                results.append(run_loss_case(obj, case, fd))
            else:
                results.append(run_optimizer_case(obj, case))
        except NotImplementedError:
            raise NotImplementedByLearnerError from None
    return results


def _float32(case: dict[str, Any]) -> dict[str, Any]:
    """The case in float32, checked for dtypes only."""
    cast = copy.deepcopy(case)
    for key in ("x", "upstream", "logits", "mask"):
        if cast.get(key) is not None:
            cast[key] = cast[key].astype(np.float32)
    cast["params"] = {k: v.astype(np.float32) for k, v in cast["params"].items()}
    if case["kind"] == "optimizer":
        cast["grads"] = [{k: g.astype(np.float32) for k, g in grads.items()} for grads in cast["grads"]]
    cast["label"] = f"{case['label']}, float32"
    cast["fd"], cast["float32"] = False, True
    return cast


def _dense_params(rng: np.random.Generator, layer: str, *shape: int) -> dict[str, np.ndarray]:
    return {f"{layer}/W": rng.standard_normal(shape), f"{layer}/b": rng.standard_normal(shape[-1])}


def build_cases(name: str, seed: int = 0) -> list[dict[str, Any]]:
    """The cases of ``name`` (one of the 14), seeded; the last is the float32 one."""
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    cases: list[dict[str, Any]] = []
    if name == "Dense":
        for n, n_in, n_out in ((1, 4, 3), (5, 6, 2), (3, 5, 5)):
            cases.append(layer_case(name, f"N={n}, {n_in}->{n_out}", zeros_and_ties(rng, (n, n_in)), rng,
                                    {"layer": "dense"}, _dense_params(rng, "dense", n_in, n_out)))
    elif name in ("ReLU", "Tanh", "Sigmoid", "LeakyReLU"):
        shapes = ((1, 7), (3, 4, 5), (2, 3, 3, 2))
        for i, shape in enumerate(shapes):
            x = zeros_and_ties(rng, shape)
            if name == "Sigmoid" and i == 1:
                # large inputs: exp(-x) overflows when computed naively
                x[0, 0] = [-40.0, 40.0, 0.0, -3.0, 3.0]
            # float32 slopes, as build_layers passes them (Keras holds alpha in float32)
            options = {"alpha": float(np.float32((0.2, 0.1, 0.3)[i]))} if name == "LeakyReLU" else {}
            cases.append(layer_case(name, f"x {'x'.join(map(str, shape))}", x, rng, options))
        alpha = {"alpha": float(np.float32(0.2))} if name == "LeakyReLU" else {}
        cases.append(layer_case(name, "inference", zeros_and_ties(rng, (2, 5)), rng, alpha, train=False))
    elif name == "Flatten":
        for shape in ((1, 3, 4, 2), (3, 5, 1, 3), (2, 7)):
            cases.append(layer_case(name, f"x {'x'.join(map(str, shape))}", rng.standard_normal(shape), rng))
    elif name == "Conv2D":
        # (N, H, W, C_in, C_out, kernel, stride, padding)
        for n, h, w, c_in, c_out, k, s, pad in (
                (1, 5, 5, 1, 2, 3, 1, "same"), (3, 7, 6, 2, 3, 3, 2, "same"), (2, 8, 7, 2, 2, 5, 3, "valid"),
                (2, 5, 4, 3, 2, 1, 1, "valid"), (1, 7, 6, 2, 2, 4, 2, "same"), (2, 6, 7, 1, 2, 2, 1, "valid"),
                (1, 9, 8, 1, 2, 3, 3, "same"), (2, 6, 5, 2, 3, 5, 1, "same")):
            cases.append(layer_case(
                name, f"N={n}, {h}x{w}x{c_in}->{c_out}, kernel {k}, stride {s}, {pad}",
                zeros_and_ties(rng, (n, h, w, c_in)), rng, {"layer": "conv", "stride": s, "padding": pad},
                {"conv/W": rng.standard_normal((k, k, c_in, c_out)), "conv/b": rng.standard_normal(c_out)}))
    elif name in ("MaxPool2D", "AvgPool2D"):
        for n, h, w, c, size, stride, ties in ((1, 4, 6, 2, 2, 2, False), (2, 7, 6, 2, 3, 2, True),
                                               (3, 5, 5, 1, 2, 1, True), (2, 8, 7, 2, 3, 3, False),
                                               (1, 7, 8, 1, 2, 3, True), (2, 5, 6, 1, 1, 1, False)):
            cases.append(layer_case(name, f"N={n}, {h}x{w}x{c}, size {size}, stride {stride}"
                                          f"{', ties' if ties else ''}",
                                    zeros_and_ties(rng, (n, h, w, c), ties), rng,
                                    {"size": size, "stride": stride}))
    elif name == "Dropout":
        for shape, rate in (((3, 6), 0.5), ((2, 3, 4, 2), 0.25), ((1, 5), 0.2)):
            mask = (rng.random(shape) >= rate) / (1 - rate)
            cases.append(layer_case(name, f"x {'x'.join(map(str, shape))}, rate {rate:g}",
                                    rng.standard_normal(shape), rng, {"rate": rate}, mask=mask))
        cases.append(layer_case(name, "inference", rng.standard_normal((3, 4)), rng, {"rate": 0.5},
                                train=False))
    elif name == "BatchNorm":
        for shape, momentum, epsilon, train in (((6, 5), 0.9, 1e-3, True), ((2, 3, 4, 3), 0.99, 1e-3, True),
                                                ((3, 2), 0.5, 1e-2, True), ((4, 3), 0.9, 1e-3, False),
                                                ((2, 2, 3, 2), 0.9, 1e-3, False)):
            f = shape[-1]
            params = {"bn/gamma": 1 + 0.5 * rng.standard_normal(f), "bn/beta": rng.standard_normal(f),
                      "bn/moving_mean": rng.standard_normal(f), "bn/moving_variance": 0.5 + rng.random(f)}
            x = 2 * rng.standard_normal(shape) + 1
            mode = "train" if train else "inference"
            cases.append(layer_case(name, f"x {'x'.join(map(str, shape))}, {mode}",
                                    x, rng, {"layer": "bn", "momentum": momentum, "epsilon": epsilon},
                                    params, train=train))
    elif name == "softmax_cross_entropy":
        for n, k, total, scale in ((1, 10, None, 1.0), (5, 7, None, 2.0), (3, 4, 8, 1.0),
                                   (4, 5, None, 400.0)):
            logits = scale * rng.standard_normal((n, k))
            if n == 5:
                logits[1] = 0.5  # a row of ties
            if scale > 10:  # exp overflows (e^1000) and underflows to 0 (e^-1000) unless shifted
                logits[0, 0], logits[1] = 1000.0, -1000.0 - np.arange(k)
            cases.append({"kind": "loss", "name": name, "fd": scale < 10, "params": {},
                          "label": f"N={n}, K={k}{f', total {total}' if total else ''}"
                                   f"{', large logits' if scale > 10 else ''}",
                          "logits": logits, "y": rng.integers(0, k, size=n), "total": total})
    elif name in OPTIMIZERS:
        for options in ({}, {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4} if name == "Adam" else None):
            if options is None:
                continue
            params = {"a/W": rng.standard_normal((3, 4)), "a/b": rng.standard_normal(4),
                      "bn/moving_mean": rng.standard_normal(4)}
            grads = [{k: rng.standard_normal(p.shape) for k, p in params.items() if "moving" not in k}
                     for _ in range(4)]
            cases.append({"kind": "optimizer", "name": name, "fd": False, "options": options,
                          "label": f"4 steps{', ' + str(options) if options else ''}",
                          "params": params, "grads": grads,
                          # powers of 2: Keras holds the rate in float32, which rounds 0.1
                          "lrs": [0.125, 0.0625, 0.25, 0.015625]})
    else:
        raise ValueError(f"no exercise named {name!r}")
    first_trained = next(c for c in cases if c.get("train", True))
    cases.append(_float32(first_trained))
    return cases
