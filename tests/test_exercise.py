"""`twinnet exercise`: the skeleton made from the lesson, the grader on the lesson, on a
correct learner's file and on a gallery of typical mistakes, and `--layers`."""

from __future__ import annotations

import ast
import inspect
import json
import time
from pathlib import Path

import numpy as np
import pytest

from twinnet import models
from twinnet.cli import main
from twinnet.comparison import cancelled_biases, relative_error
from twinnet.exercise.grader import grade
from twinnet.exercise.names import NAMES
from twinnet.exercise.skeleton import skeleton
from twinnet.numpy_nn.network import LESSON

SOLUTION = Path(__file__).with_name("exercise_solution.py")
# A file that defines the 14 names as the lesson's own.
LESSON_FILE = """\
from twinnet.numpy_nn.activations import LeakyReLU, Sigmoid, Tanh
from twinnet.numpy_nn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from twinnet.numpy_nn.losses import softmax_cross_entropy
from twinnet.numpy_nn.normalization import BatchNorm, Dropout
from twinnet.numpy_nn.optimizers import SGD, Adam
"""

# (id, name, [(old, new) edits of the correct solution], expected status, words of the message)
MISTAKES = [
    ("bias-averaged", "Dense", [('np.einsum("no->o", dz)', 'np.einsum("no->o", dz) / len(dz)')],
     "fail", "averaged over the batch instead of summed"),
    ("dW-divided-by-N", "Dense",
     [('np.einsum("ni,no->io", self.x, dz)', 'np.einsum("ni,no->io", self.x, dz) / len(dz)')],
     "fail", "divided by the batch size N"),
    ("dW-transposed", "Dense", [('np.einsum("ni,no->io", self.x, dz)', 'np.einsum("ni,no->oi", self.x, dz)')],
     "fail", "transposed"),
    ("loss-without-1/N", "softmax_cross_entropy", [("((p - onehot) / t)", "(p - onehot)")],
     "fail", "the 1/N of the mean loss was not applied"),
    ("loss-1/N-twice", "softmax_cross_entropy", [("((p - onehot) / t)", "((p - onehot) / t / t)")],
     "fail", "the 1/N of the mean loss was applied twice"),
    ("sgd-sign-flipped", "SGD", [("params[key] -= np.asarray(lr", "params[key] += np.asarray(lr")],
     "fail", "sign flipped"),
    ("conv-dx-not-accumulated", "Conv2D", [("dxp[:, rows, cols] += ", "dxp[:, rows, cols] = ")],
     "fail", "wrong only where windows overlap"),
    ("conv-flipped-kernel", "Conv2D",
     [('z += np.einsum("nijc,co->nijo", patch, self.W[p, q])',
       'z += np.einsum("nijc,co->nijo", patch, self.W[k - 1 - p, k - 1 - q])')],
     "fail", "a true convolution (flipped kernel)"),
    ("maxpool-to-every-element", "MaxPool2D", [("+= d * (self.where == p * k + q)", "+= d")],
     "fail", "went to every element of the window"),
    ("maxpool-last-of-ties", "MaxPool2D", [("better = v > best", "better = v >= best")],
     "fail", "wrong only at ties"),
    ("avgpool-without-1/k2", "AvgPool2D", [("+= d / (k * k)", "+= d")],
     "fail", "the 1/k² of the window mean is missing"),
    ("tanh-from-input", "Tanh", [("return d - d * self.a * self.a", "return d - d * self.x * self.x")],
     "fail", "tanh's derivative taken from the input"),
    ("sigmoid-from-input", "Sigmoid",
     [("return d * (self.a - self.a * self.a)", "return d * (self.x - self.x * self.x)")],
     "fail", "sigmoid's derivative taken from the input"),
    ("relu-gradient-at-zero", "ReLU", [("self.on = (x > 0)", "self.on = (x >= 0)")],
     "fail", "wrong only at the kink x == 0"),
    ("batchnorm-without-mean-terms", "BatchNorm",
     [("return (dxhat - dxhat.mean(axis=axes) - self.xhat * (dxhat * self.xhat).mean(axis=axes)) / self.sd",
       "return dxhat / self.sd")],
     "fail", "without its mean terms"),
    ("moving-statistics-not-updated", "BatchNorm",
     [("            self.moving_mean *= self.momentum\n"
       "            self.moving_mean += (1 - self.momentum) * mu\n", "")],
     "fail", "moving_mean not updated"),
    ("adam-without-bias-correction", "Adam",
     [("step = lr * np.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)", "step = lr")],
     "fail", "Adam without bias correction"),
    ("dropout-not-inverted", "Dropout",
     [("return x * self.mask.astype(x.dtype) if train else x", "return x * (self.mask > 0) if train else x"),
      ("return d * self.mask.astype(d.dtype)", "return d * (self.mask > 0)")],
     "fail", "dropout not inverted"),
    ("crash", "Flatten", [("return d.reshape(self.shape)", "return d.reshape(self.shap)")],
     "error", "AttributeError"),
    ("endless-loop", "LeakyReLU", [("return d * self.slope", "while True:\n            pass")],
     "timeout", "no answer within"),
]


def mistaken(mistake: tuple) -> str:
    """The solution with ``mistake``'s edits, each of which must apply exactly once."""
    text = SOLUTION.read_text()
    for old, new in mistake[2]:
        assert text.count(old) == 1, f"{mistake[0]}: {old!r} appears {text.count(old)} times"
        text = text.replace(old, new)
    return text


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def by_name(results) -> dict:
    return {r.name: r for r in results}


# --- the workspace -------------------------------------------------------------------


def test_skeleton_keeps_the_lessons_interface():
    """Generated from the lesson's source: for each of the 14 names the class (or
    function), its constructor's signature and its docstrings are the lesson's, and each
    computing body raises NotImplementedError."""
    namespace: dict = {}
    exec(compile(skeleton(), "layers.py", "exec"), namespace)  # noqa: S102 (our own generated text)
    for name in NAMES:
        ours, lesson = namespace[name], LESSON[name]
        assert inspect.getdoc(ours) == inspect.getdoc(lesson), name
        if inspect.isclass(lesson):
            assert inspect.signature(ours.__init__) == inspect.signature(lesson.__init__), name
            for method in ("forward", "backward", "step"):
                if hasattr(lesson, method):
                    mine, theirs = getattr(ours, method), getattr(lesson, method)
                    assert inspect.signature(mine) == inspect.signature(theirs)
                    assert inspect.getdoc(mine) == inspect.getdoc(theirs)
        else:
            assert inspect.signature(ours) == inspect.signature(lesson)
    tree = ast.parse(skeleton())
    stubs = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
             and node.name in ("forward", "backward", "step", "softmax_cross_entropy")]
    assert len(stubs) == 11 * 2 + 1 + 2
    for node in stubs:
        assert ast.unparse(node.body[-1]) == "raise NotImplementedError"


def test_start_writes_a_workspace_and_refuses_to_overwrite(tmp_path, capsys):
    code, out, _ = run_cli(["exercise", "start", str(tmp_path / "ws")], capsys)
    assert code == 0 and "layers.py" in out
    readme = (tmp_path / "ws" / "README.md").read_text()
    order = [readme.index(f"`{name}`") for name in ("Dense", "softmax_cross_entropy", "Conv2D", "Flatten",
                                                    "Tanh", "Adam")]
    assert order == sorted(order) and "twinnet train mlp128 --layers layers.py" in readme
    assert "twinnet train cnn --layers layers.py" in readme
    (tmp_path / "ws" / "layers.py").write_text("# my work\n")
    code, _, err = run_cli(["exercise", "start", str(tmp_path / "ws")], capsys)
    assert code == 2 and "--force" in err and "Traceback" not in err
    assert (tmp_path / "ws" / "layers.py").read_text() == "# my work\n"  # nothing half-written
    code, _, _ = run_cli(["exercise", "start", str(tmp_path / "ws"), "--force", "--only", "Dense", "SGD"],
                         capsys)
    text = (tmp_path / "ws" / "layers.py").read_text()
    assert code == 0 and "class Dense" in text and "class SGD" in text and "class Conv2D" not in text


def test_the_skeleton_checks_as_not_implemented(tmp_path, capsys):
    run_cli(["exercise", "start", str(tmp_path)], capsys)
    code, out, err = run_cli(["exercise", "check", str(tmp_path / "layers.py"), "--json"], capsys)
    results = json.loads(out)["results"]
    assert [r["name"] for r in results] == list(NAMES)
    assert {r["status"] for r in results} == {"not_implemented"}
    assert code == 1 and err == ""


# --- the grader on correct files -----------------------------------------------------


def test_the_lesson_passes_the_grader(tmp_path):
    path = tmp_path / "lesson.py"
    path.write_text(LESSON_FILE)
    results, _ = grade(path, use_tf=False)
    assert [(r.name, r.status) for r in results] == [(name, "pass") for name in NAMES]
    assert all({"forward", "reference", "finite differences"} <= set(r.checks)
               for r in results if r.name not in ("SGD", "Adam"))


def test_an_independent_solution_passes_all_14_in_time(capsys):
    """Written apart from the lesson; the CLI's table, summary and exit code."""
    start = time.monotonic()
    code, out, err = run_cli(["exercise", "check", str(SOLUTION)], capsys)
    assert time.monotonic() - start < 60
    assert code == 0 and "14 of 14 implemented pass" in out and err == ""
    assert out.count(" pass ") == 14


@pytest.mark.tf
def test_tensorflow_checks_run_where_installed(tmp_path):
    pytest.importorskip("tensorflow")
    results, tf_status = grade(SOLUTION, only=("Conv2D", "BatchNorm", "Adam", "softmax_cross_entropy"))
    assert tf_status == "ran"
    assert all(r.status == "pass" and "tensorflow" in r.checks for r in results), results


def test_a_name_left_out_is_not_graded_and_only_selects(tmp_path):
    text = SOLUTION.read_text()
    path = tmp_path / "part.py"
    path.write_text(text[:text.index("class LeakyReLU")])  # Dense, ReLU (and a helper) only
    results, _ = grade(path, use_tf=False)
    assert [(r.name, r.status) for r in results] == [("Dense", "pass"), ("ReLU", "pass")]
    results, _ = grade(SOLUTION, only=("Tanh",), use_tf=False)
    assert [r.name for r in results] == ["Tanh"]


# --- the mistake gallery -------------------------------------------------------------


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_fails_exactly_its_layer_with_its_hint(mistake, tmp_path):
    ident, name, _, status, words = mistake
    path = tmp_path / "layers.py"
    path.write_text(mistaken(mistake))
    results = by_name(grade(path, use_tf=False, timeout=3 if status == "timeout" else 20)[0])
    assert set(results) == set(NAMES)
    others = {n: (r.status, r.message) for n, r in results.items() if n != name}
    assert all(s == "pass" for s, _ in others.values()), others
    assert results[name].status == status, results[name]
    assert words in results[name].message, results[name].message
    assert "\n" not in results[name].message


def test_the_gallery_has_the_issues_mistakes():
    assert len(MISTAKES) >= 15
    assert {m[3] for m in MISTAKES} == {"fail", "error", "timeout"}


def test_a_crash_names_its_line(tmp_path):
    path = tmp_path / "layers.py"
    path.write_text(mistaken(next(m for m in MISTAKES if m[0] == "crash")))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "self.shap)" in text)
    message = by_name(grade(path, only=("Flatten",), use_tf=False)[0])["Flatten"].message
    assert f"layers.py line {line}, in backward" in message


# --- unusable input: one line, exit 2 ------------------------------------------------


@pytest.mark.parametrize("content, words", [
    ("class Dense:\n    def forward(self, x\n", "SyntaxError"),
    ("import numpy as np\nraise RuntimeError('at import')\n", "RuntimeError: at import"),
    (None, "no such file"),
])
def test_unusable_files_are_one_line_and_exit_2(content, words, tmp_path, capsys):
    path = tmp_path / "layers.py"
    if content is not None:
        path.write_text(content)
    code, out, err = run_cli(["exercise", "check", str(path)], capsys)
    assert code == 2 and words in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_a_file_without_any_name_exits_1(tmp_path, capsys):
    path = tmp_path / "layers.py"
    path.write_text("x = 1\n")
    code, out, _ = run_cli(["exercise", "check", str(path)], capsys)
    assert code == 1 and "defines none" in out


def test_a_hang_at_import_is_bounded(tmp_path, capsys):
    path = tmp_path / "layers.py"
    path.write_text("while True:\n    pass\n")
    start = time.monotonic()
    code, _, err = run_cli(["exercise", "check", str(path), "--timeout", "2"], capsys)
    assert code == 2 and "no answer within 2 s" in err and time.monotonic() - start < 30


# --- --layers: the learner's classes in the NumPy twin ---------------------------------


def test_layers_builds_the_twin_from_the_learners_classes():
    from twinnet.backend import load_model
    from twinnet.exercise.learner import load_lesson

    lesson = load_lesson(SOLUTION)
    model = load_model("cnn-bn-dropout", "numpy", seed=1, lesson=lesson)
    kinds = {type(layer).__module__ for layer in model.network.layers}
    assert kinds == {"twinnet_learner_layers"}
    reference = load_model("cnn-bn-dropout", "numpy", seed=1, reference=True)
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 6)
    for m in (model, reference):
        m.set_dropout_masks(models.dropout_masks("cnn-bn-dropout", 6, 0, 0))
    loss, grads = model.loss_and_grads(x, y)
    ref_loss, ref_grads = reference.loss_and_grads(x, y)
    assert abs(loss - ref_loss) < 1e-5
    for key in set(ref_grads) - cancelled_biases("cnn-bn-dropout"):  # 0 but for rounding: not compared
        assert relative_error(grads[key], ref_grads[key]) < 1e-4, key


def test_gradcheck_with_layers_passes_and_fails(tmp_path, capsys):
    code, out, _ = run_cli(["gradcheck", "mlp128", "--layers", str(SOLUTION)], capsys)
    assert code == 0 and "your layers from" in out
    path = tmp_path / "layers.py"
    path.write_text(mistaken(next(m for m in MISTAKES if m[0] == "bias-averaged")))
    code, out, _ = run_cli(["gradcheck", "mlp128", "--layers", str(path)], capsys)
    assert code == 1 and "FAIL" in out


def test_layers_with_a_crash_is_one_line(tmp_path, capsys):
    path = tmp_path / "layers.py"
    path.write_text(mistaken(next(m for m in MISTAKES if m[0] == "crash")))
    code, out, err = run_cli(["gradcheck", "cnn", "--layers", str(path)], capsys)
    assert code == 2 and "AttributeError" in err and "Traceback" not in err + out


def test_layers_refuses_the_tf_twin(capsys):
    code, _, err = run_cli(["evaluate", "--backend", "tf", "--layers", str(SOLUTION)], capsys)
    assert code == 2 and "--backend numpy" in err


@pytest.mark.tf
def test_compare_sets_the_learners_layers_beside_tensorflow(capsys):
    pytest.importorskip("tensorflow")
    code, out, _ = run_cli(["compare", "cnn", "--layers", str(SOLUTION), "--batch", "8"], capsys)
    assert code == 0 and "your layers from" in out


@pytest.mark.slow
def test_train_with_layers_matches_reference(mnist_path, tmp_path, capsys):
    """200 steps of mlp128 on the learner's layers land where the reference layers do."""
    figures = {}
    for flag in (["--layers", str(SOLUTION)], ["--reference"]):
        out_dir = tmp_path / flag[0].strip("-")
        code, out, _ = run_cli(["train", "mlp128", *flag, "--steps", "200", "--seed", "3",
                                "--data-dir", str(mnist_path), "--out", str(out_dir)], capsys)
        assert code == 0
        figures[flag[0]] = json.loads((out_dir / "metrics.json").read_text())["final"]["test"]["accuracy"]
        if flag[0] == "--layers":
            assert "trained on your layers from" in out and "Dense, ReLU, Flatten" in out
    assert abs(figures["--layers"] - figures["--reference"]) <= 0.003, figures


def test_without_tensorflow_the_other_checks_run_and_say_so(monkeypatch, capsys):
    """As where TensorFlow is not installed: every name still graded, in well under 60 s."""
    import twinnet.exercise.grader as grader

    monkeypatch.setattr(grader, "tf_installed", lambda: False)
    start = time.monotonic()
    code, out, _ = run_cli(["exercise", "check", str(SOLUTION)], capsys)
    assert time.monotonic() - start < 60
    assert code == 0
    assert "14 of 14 implemented pass (without TensorFlow's checks: TensorFlow not installed)" in out
    assert "tensorflow" not in out.split("\n", 2)[2]  # no row lists the check


def test_a_process_that_dies_is_an_error_and_prints_go_nowhere(tmp_path, capsys):
    text = SOLUTION.read_text().replace("return d.reshape(self.shape)",
                                        "print('debugging'); import os; os._exit(3)")
    path = tmp_path / "layers.py"
    path.write_text(text)
    code, out, err = run_cli(["exercise", "check", str(path), "--only", "Flatten", "Dense", "--json"], capsys)
    results = {r["name"]: r for r in json.loads(out)["results"]}
    assert code == 1 and results["Dense"]["status"] == "pass" and "debugging" not in out + err
    assert results["Flatten"]["status"] == "error" and "exit code 3" in results["Flatten"]["message"]


def test_layers_takes_the_lessons_names_where_the_workspace_still_has_stubs(tmp_path, capsys):
    from twinnet.exercise.learner import load_lesson

    text = skeleton()
    solution = SOLUTION.read_text()
    dense = solution[solution.index("class Dense"):solution.index("class _Elementwise")]
    text = text[:text.index("class Dense")] + dense + text[text.index("class ReLU"):]
    path = tmp_path / "layers.py"
    path.write_text(text)
    assert list(load_lesson(path)) == ["Dense"]
    (tmp_path / "stubs.py").write_text(skeleton())
    code, _, err = run_cli(["gradcheck", "linear", "--layers", str(tmp_path / "stubs.py")], capsys)
    assert code == 2 and "implements none" in err


def test_evaluate_with_layers_matches_the_lesson(mnist_path, tmp_path, capsys):
    from twinnet.models import init_params
    from twinnet.weights import save_weights

    path = tmp_path / "mlp128.npz"
    save_weights(path, "mlp128", init_params("mlp128", 2), {"backend": "numpy"})
    figures = {}
    for flags in ([], ["--layers", str(SOLUTION)]):
        code, out, _ = run_cli(["evaluate", "--weights", str(path), "--data-dir", str(mnist_path), "--json",
                                *flags], capsys)
        assert code == 0
        figures[bool(flags)] = json.loads(out)
    assert figures[True]["correct"] == figures[False]["correct"]
    assert abs(figures[True]["loss"] - figures[False]["loss"]) < 1e-4
