"""``twinnet exercise check``: grade a learner's file, name by name.

Each name the file defines is run on its cases (``cases.build_cases``) in a child
process of its own with a time limit (``isolation.run_jobs``); the lesson's answers are
computed here, TensorFlow's in one more child where TensorFlow is installed
(``tf_side``). Then, per case and in this order:

- ``forward``: the output against the lesson's layer (relative 1e-7 of its largest entry);
- ``side effects``: the input (and the upstream gradient) left unmodified, batch norm's
  moving statistics, an optimizer's ``iterations`` and its in-place update;
- ``reference``: every gradient (dx, each parameter's; the loss's dlogits; an optimizer's
  updates) against the lesson's;
- ``finite differences``: the gradients against central differences of the learner's own
  forward (``gradcheck.numeric_grad``), so a wrong forward still learns whether its
  backward matches it;
- ``tensorflow``: against TensorFlow's autodiff and Keras's optimizers;
- ``dtype``: float32 in gives float32 out.

The first failure is the name's one line, with a hint where the error has a known
shape (``hints``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from twinnet.comparison import max_abs_diff
from twinnet.errors import TwinnetError
from twinnet.exercise import cases as case_lib
from twinnet.exercise.hints import hint
from twinnet.exercise.isolation import Outcome, run_jobs
from twinnet.exercise.learner import check_source, defined, import_file
from twinnet.exercise.tf_side import tf_answers, tf_installed
from twinnet.numpy_nn.network import LESSON

DEFAULT_TIMEOUT = 20.0
# TensorFlow's import alone takes several seconds on a busy machine.
TF_TIMEOUT = 120.0
IMPORT_TIMEOUT = 20.0
TOLERANCE = 1e-7  # relative to the expected array's largest entry, float64
FD_TOLERANCE = 1e-6  # gradcheck's threshold
# Keras's Adam computes its beta powers in float32 even for float64 variables.
TF_TOLERANCE = {"layer": 1e-7, "loss": 1e-7, "optimizer": 1e-4}
STATUSES = ("pass", "fail", "error", "timeout", "not_implemented")
# What the learner calls each array.
LABELS = {"out": "out", "dx": "dx", "dlogits": "dlogits", "loss": "loss"}


@dataclass
class Result:
    """One graded name: ``status`` one of STATUSES, the checks that ran, one line."""

    name: str
    status: str
    message: str = ""
    checks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class CheckError(Exception):
    """A check failed: its one-line message."""


def _label(key: str) -> str:
    if "/" in key and not key.startswith("snapshot"):
        return f"d{key.rsplit('/', 1)[1]}" if "moving" not in key else key.rsplit("/", 1)[1]
    return LABELS.get(key, key)


def _where(index: tuple[int, ...]) -> str:
    return f"[{', '.join(map(str, index))}]" if index else ""


def _compare(case: dict, key: str, actual: Any, wanted: np.ndarray, expected: dict, tol: float,
             label: str | None = None) -> str | None:
    """None if ``actual`` matches ``wanted``, else the failure's text with its hint."""
    label = label or _label(key)
    a = np.asarray(actual)
    if a.dtype == object:
        kind = a.item() if a.shape == () else "an array of objects"
        return f"{label} is {'None' if kind == 'NoneType' else kind}, not an array of numbers"
    if a.shape != np.shape(wanted):
        text = f"{label} has shape {a.shape}, expected {np.shape(wanted)}"
        found = hint(case, key, label, a, wanted, expected, tol) if a.dtype.kind in "fiu" else ""
        return f"{text}; hint: {found}" if found else text
    if a.dtype.kind not in "fiub":
        return f"{label} holds {a.dtype}, not numbers"
    a = a.astype(np.float64)
    e = np.asarray(wanted, np.float64)
    bad = ~np.isfinite(a) & np.isfinite(e)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        text = f"{label}{_where(index)} is {a[index]} where {e[index]:.6g} belongs"
        if case["name"] == "softmax_cross_entropy":
            text += ("; hint: overflow at large logits: subtract each row's maximum before exp "
                     "(log-sum-exp), exp of a large logit is inf")
        elif case["name"] == "Sigmoid":
            text += "; hint: exp(-x) overflows for large |x|: compute sigmoid as (1 + tanh(x/2)) / 2"
        return text
    scale = max(float(np.max(np.abs(e), initial=0.0)), 1e-12)
    if max_abs_diff(a, e) <= tol * scale:
        return None
    index = np.unravel_index(int(np.argmax(np.abs(a - e))), a.shape) if a.ndim else ()
    index = tuple(int(i) for i in index)
    text = f"{label}{_where(index)}: expected {e[index]:.6g}, got {a[index]:.6g}"
    found = hint(case, key, label, a, e, expected, tol)
    return f"{text}; hint: {found}" if found else text


def _arrays(case: dict, answer: dict) -> dict[str, Any]:
    """The gradient-like arrays of an answer by key: dx and parameter gradients; the
    loss's dlogits; an optimizer's change of each parameter at each step."""
    if case["kind"] == "layer":
        grads = answer.get("grads", {})
        return {"dx": answer["dx"], **{k: grads.get(k) for k in case_lib.trainable(case)}}
    if case["kind"] == "loss":
        return {"dlogits": answer["dlogits"]}
    return {f"snapshot {k} {i}": snap[k] - case["params"][k]
            for i, snap in enumerate(answer["snapshots"]) for k in snap}


def _judge_case(case: dict, mine: dict, ref: dict, tf: dict | None, checks: list[str]) -> None:
    """Raise Failure at the first check of ``case`` that fails; note the checks run."""
    def ran(check: str) -> None:
        if check not in checks:
            checks.append(check)

    where = f" ({case['label']})"
    if case.get("float32"):
        ran("dtype")
        _judge_dtypes(case, mine, where)
        return
    if case["kind"] == "layer":
        ran("forward")
        if problem := _compare(case, "out", mine["out"], ref["out"], ref, TOLERANCE):
            raise CheckError(f"forward{where}: {problem}{_fd_verdict(mine)}")
    if case["kind"] == "loss":
        ran("forward")
        if problem := _compare(case, "loss", mine["loss"], ref["loss"], ref, TOLERANCE):
            raise CheckError(f"loss{where}: {problem}")
    ran("side effects")
    if mine.get("modified"):
        raise CheckError(f"side effects{where}: {' and '.join(mine['modified'])} modified in place; "
                      "hint: compute into new arrays (x = x - m makes one, x -= m writes into the "
                      "caller's array)")
    _judge_side_effects(case, mine, ref, where)
    if case["kind"] == "layer" and not case["train"]:
        return
    ran("reference")
    expected = _arrays(case, ref)
    if case["kind"] == "layer":
        grads = mine.get("grads", {})
        missing = [k for k in case_lib.trainable(case) if k not in grads]
        if missing:
            raise CheckError(f"backward{where}: grads has no {', '.join(repr(k) for k in missing)}; hint: "
                          "backward fills self.grads under the canonical names, as params names the arrays")
    actual = _arrays(case, mine)
    for key, wanted in expected.items():
        label = _step_label(key)
        if problem := _compare(case, key, actual[key], wanted, ref, TOLERANCE, label):
            raise CheckError(f"{'update' if key.startswith('snapshot') else 'backward'}{where}: {problem}"
                          f"{_also(case, key, actual[key], mine, tf)}")
    if "fd" in mine:
        ran("finite differences")
        for key, (index, numeric) in mine["fd"].items():
            analytic = np.asarray(actual[key], np.float64).reshape(-1)[index]
            keep = np.isfinite(numeric)  # NaN: every step crossed a kink
            scale = max(float(np.max(np.abs(numeric[keep]), initial=0.0)), 1e-12)
            if max_abs_diff(analytic[keep], numeric[keep]) > FD_TOLERANCE * scale:
                worst = int(np.argmax(np.where(keep, np.abs(analytic - numeric), -1)))
                raise CheckError(f"backward{where}: {_label(key)} disagrees with finite differences of "
                                 f"your own forward at flat index {int(index[worst])}: they give "
                                 f"{numeric[worst]:.6g}, your backward {analytic[worst]:.6g}")
    if tf is not None:
        ran("tensorflow")
        for key, wanted in _arrays(case, tf).items():
            if problem := _compare(case, key, actual[key], wanted, ref, TF_TOLERANCE[case["kind"]],
                                   _step_label(key)):
                raise CheckError(f"against TensorFlow{where}: {problem}")


def _step_label(key: str) -> str:
    if key.startswith("snapshot"):
        _, param, step = key.split(" ")
        return f"step {int(step) + 1}: the update of {param}"
    return _label(key)


def _fd_verdict(mine: dict) -> str:
    """Whether the backward matches finite differences of the learner's own forward (said
    beside a wrong forward, so a learner still learns whether the backward fits it)."""
    if "fd" not in mine or mine.get("dx") is None:
        return ""
    for key, (index, numeric) in mine["fd"].items():
        array = mine["dx"] if key == "dx" else mine.get("grads", {}).get(key)
        flat = np.asarray(array).reshape(-1) if array is not None else np.zeros(0)
        if flat.dtype.kind != "f" or flat.size <= int(np.max(index, initial=0)):
            return "; your backward's shape does not fit your forward"
        keep = np.isfinite(numeric)
        scale = max(float(np.max(np.abs(numeric[keep]), initial=0.0)), 1e-12)
        if max_abs_diff(flat[index][keep], numeric[keep]) > FD_TOLERANCE * scale:
            return "; your backward does not match finite differences of your forward either"
    return "; your backward does match finite differences of your own forward"


def _also(case: dict, key: str, actual: Any, mine: dict, tf: dict | None) -> str:
    """Which other sources also disagree (finite differences of their own forward)."""
    if "fd" not in mine or key not in mine["fd"]:
        return ""
    index, numeric = mine["fd"][key]
    if np.asarray(actual).dtype.kind not in "fiu":
        return ""
    flat = np.asarray(actual, np.float64).reshape(-1)
    if flat.size <= int(np.max(index, initial=0)):
        return ""
    keep = np.isfinite(numeric)
    scale = max(float(np.max(np.abs(numeric[keep]), initial=0.0)), 1e-12)
    agrees = max_abs_diff(flat[index][keep], numeric[keep]) <= FD_TOLERANCE * scale
    return (" (though it matches finite differences of your forward: check the forward's edge cases)"
            if agrees else " (finite differences of your own forward disagree too)")


def _judge_side_effects(case: dict, mine: dict, ref: dict, where: str) -> None:
    if case["kind"] == "layer" and case["train"]:
        for key, wanted in ref.get("moving", {}).items():
            got = mine["moving"][key]
            if problem := _compare(case, key, got, wanted, ref, TOLERANCE):
                held = mine["moving_attr"].get(key)
                if held is not None and held.dtype != object and held.shape == wanted.shape and \
                        max_abs_diff(held, wanted) <= TOLERANCE * max(float(np.max(np.abs(wanted))), 1e-12):
                    problem = (f"{_label(key)} was replaced, not updated in place; hint: write "
                               f"{_label(key)}[...] = ..., so the model's array (params) sees it")
                raise CheckError(f"side effects{where}: {problem}")
    if case["kind"] == "optimizer":
        if mine["rebound"]:
            raise CheckError(f"side effects{where}: params[{mine['rebound'][0]!r}] was replaced, not updated "
                          "in place; hint: update the array itself (p -= ...), which the layers hold")
        for step, (got, wanted) in enumerate(zip(mine["iterations"], ref["iterations"], strict=True)):
            if got.dtype == object or got.shape != () or int(got) != int(wanted):
                shown = got.item() if got.shape == () else got
                raise CheckError(f"side effects{where}: iterations is {shown} "
                              f"after {step + 1} step(s), expected {int(wanted)}; hint: count each update "
                              "(self.iterations += 1 once per step)")
        still = [k for k in case["params"] if k not in case["grads"][0]]
        for key in still:
            if not np.array_equal(mine["snapshots"][-1][key], case["params"][key]):
                raise CheckError(f"side effects{where}: {key} changed, though it has no gradient; "
                                 "hint: update only the parameters that have one in grads")


def _judge_dtypes(case: dict, mine: dict, where: str) -> None:
    arrays = {"out": mine.get("out"), "dx": mine.get("dx"), "dlogits": mine.get("dlogits"),
              **{k: v for k, v in mine.get("grads", {}).items()},
              **({k: v for k, v in mine["snapshots"][-1].items()} if "snapshots" in mine else {})}
    for key, value in arrays.items():
        if value is None:
            continue
        dtype = np.asarray(value).dtype
        if dtype != np.float32:
            raise CheckError(f"dtype{where}: float32 in gave {_label(key) if '/' in key else key} in "
                                   f"{dtype}; hint: keep the input's dtype (a float64 array, or np.zeros "
                                   "without dtype=, promotes it)")


def judge(name: str, cases: list[dict], outcome: Outcome, tf: list | None) -> Result:
    """The Result of ``name`` from its child's outcome, the lesson's answers and TensorFlow's."""
    if outcome.status == "timeout":
        return Result(name, "timeout", outcome.value)
    if outcome.status != "ok":
        return Result(name, "error", outcome.value)
    if outcome.value == "not_implemented":
        return Result(name, "not_implemented", "a body still raises NotImplementedError")
    reference = case_lib.run_cases(LESSON[name], cases)
    checks: list[str] = []
    try:
        for i, (case, mine, ref) in enumerate(zip(cases, outcome.value, reference, strict=True)):
            _judge_case(case, mine, ref, tf[i] if tf is not None else None, checks)
    except CheckError as failure:
        return Result(name, "fail", str(failure), checks)
    except Exception as exc:  # noqa: BLE001 (an answer of a shape no check foresaw)
        return Result(name, "fail", f"its answers could not be checked ({type(exc).__name__}: {exc})", checks)
    n = len(cases)
    return Result(name, "pass", f"{n} case{'s' if n != 1 else ''}", checks)


def _probe(path: str) -> list[str]:
    return defined(import_file(path))


def _grade_child(path: str, name: str, cases: list[dict]) -> Any:
    module = import_file(path)
    try:
        return case_lib.run_cases(getattr(module, name), cases, fd=True, reference=LESSON[name])
    except case_lib.NotImplementedByLearnerError:
        return "not_implemented"


def grade(path: str | os.PathLike, only: tuple[str, ...] | None = None, seed: int = 0,
          timeout: float = DEFAULT_TIMEOUT, use_tf: bool | None = None,
          workers: int | None = None) -> tuple[list[Result], str]:
    """Grade every name of ``only`` (default: the 14) that the file defines. Returns the
    results in ``NAMES`` order and what became of TensorFlow's checks: "ran", "not
    installed", "nothing to check" (no name gave answers) or "failed: why". TwinnetError for a
    missing file, a syntax error, or a module that fails or hangs on import."""
    full = check_source(path)
    probe = run_jobs({"import": (_probe, (full,), min(timeout, IMPORT_TIMEOUT))}, learner_file=full)["import"]
    if probe.status != "ok":
        raise TwinnetError(f"importing {path} failed: {probe.value}")
    names = [name for name in probe.value if only is None or name in only]
    cases = {name: case_lib.build_cases(name, seed) for name in names}
    use_tf = tf_installed() if use_tf is None else use_tf
    jobs = {name: (_grade_child, (full, name, cases[name]), timeout) for name in names}
    outcomes = run_jobs(jobs, workers or min(2, os.cpu_count() or 1), full)
    # TensorFlow after the learner's code, for the names that gave answers only: a skeleton
    # or a file of crashes is graded without waiting for TensorFlow to start.
    answered = {name: cases[name] for name in names
                if outcomes[name].status == "ok" and outcomes[name].value != "not_implemented"}
    answers, tf_status = {}, "not installed" if not use_tf else "nothing to check"
    if use_tf and answered:
        tf = run_jobs({"tensorflow": (tf_answers, (answered,), TF_TIMEOUT)})["tensorflow"]
        answers = tf.value if tf.status == "ok" else {}
        tf_status = "ran" if tf.status == "ok" else f"failed: {tf.value}"
    results = [judge(name, cases[name], outcomes[name], answers.get(name)) for name in names]
    return results, tf_status
