"""A learner's ``layers.py``: checked, imported, and the names of the 14 it defines."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from twinnet import models
from twinnet.errors import TwinnetError
from twinnet.exercise.isolation import describe_exception
from twinnet.exercise.names import NAMES

MODULE_NAME = "twinnet_learner_layers"


def check_source(path: str | os.PathLike) -> str:
    """The file's absolute path, after checking that it exists and compiles; TwinnetError
    (one line: the file and the syntax error's line) otherwise. Nothing of it runs."""
    path = Path(path)
    if not path.is_file():
        raise TwinnetError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    try:
        with tokenize.open(path) as handle:  # honours a coding line, as import does
            source = handle.read()
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise TwinnetError(f"{path} line {exc.lineno}: SyntaxError: {exc.msg}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TwinnetError(f"cannot read {path}: {exc}") from None
    return os.path.abspath(path)


def import_file(path: str) -> ModuleType:
    """Import the learner's file as a module (its folder on sys.path, for its own helpers)."""
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def defined(module: ModuleType) -> list[str]:
    """Which of the 14 names the module defines (callable: a class, or the loss function)."""
    return [name for name in NAMES if callable(getattr(module, name, None))]


def _stub(fn: Any) -> bool:
    """Whether function ``fn``'s body is still the skeleton's: (a docstring and) ``raise
    NotImplementedError``."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return False
    body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return (len(body) == 1 and isinstance(body[0], ast.Raise) and body[0].exc is not None
            and "NotImplementedError" in ast.unparse(body[0].exc))


def still_stubs(obj: Any) -> bool:
    """Whether a class or function of the learner's still has a body of the skeleton's."""
    if inspect.isclass(obj):
        return any(_stub(getattr(obj, m)) for m in ("forward", "backward", "step") if hasattr(obj, m))
    return _stub(obj)


def load_lesson(path: str | os.PathLike) -> dict[str, Any]:
    """The learner's classes and functions by name, for ``--layers``: imported in this
    process (TwinnetError naming the line if importing fails). A name whose body is still
    the skeleton's ``raise NotImplementedError`` is left out, so the lesson's stands in:
    a workspace trains as soon as the names a model uses are written."""
    full = check_source(path)
    try:
        module = import_file(full)
    except Exception as exc:  # noqa: BLE001 (the learner's module code may raise anything)
        raise TwinnetError(f"importing {path} failed: {describe_exception(exc, full)}") from None
    lesson = {name: getattr(module, name) for name in defined(module)
              if not still_stubs(getattr(module, name))}
    if not lesson:
        raise TwinnetError(f"{path} implements none of the exercise's 14 names yet (a body that "
                           "raises NotImplementedError does not count)")
    return lesson


@contextmanager
def learner_errors(path: str | os.PathLike | None, lesson: dict[str, Any] | None) -> Iterator[None]:
    """Turn an exception raised in the learner's code (with ``lesson`` given) into one
    TwinnetError line naming its type, message and the learner's line: a command run with
    ``--layers`` prints no traceback for the learner's bugs either."""
    try:
        yield
    except TwinnetError:
        raise
    except Exception as exc:
        if not lesson:
            raise
        full = os.path.abspath(path)
        raise TwinnetError(f"your layers ({path}) failed: {describe_exception(exc, full)}; "
                           f"twinnet exercise check {path} grades them one by one") from None


# The exercise's name of each spec layer kind.
SPEC_NAMES = {models.DenseSpec: "Dense", models.ReLUSpec: "ReLU", models.TanhSpec: "Tanh",
              models.SigmoidSpec: "Sigmoid", models.LeakyReLUSpec: "LeakyReLU",
              models.FlattenSpec: "Flatten", models.Conv2DSpec: "Conv2D",
              models.MaxPool2DSpec: "MaxPool2D", models.AvgPool2DSpec: "AvgPool2D",
              models.DropoutSpec: "Dropout", models.BatchNormSpec: "BatchNorm"}


def used_names(model: str, optimizer: str | None = None) -> set[str]:
    """The exercise's names a model runs through: its layers, the loss, and the optimizer."""
    used = {SPEC_NAMES[type(spec)] for spec in models.get_spec(model)} | {"softmax_cross_entropy"}
    return used | ({{"sgd": "SGD", "adam": "Adam"}[optimizer]} if optimizer else set())


def describe_lesson(path: str | os.PathLike, lesson: dict[str, Any], model: str,
                    optimizer: str | None = None) -> str:
    """One line: which of the names ``model`` uses came from the learner's file, which
    from the lesson."""
    used = used_names(model, optimizer)
    theirs = [name for name in NAMES if name in lesson and name in used]
    ours = [name for name in NAMES if name not in lesson and name in used]
    return (f"your layers from {path}: {', '.join(theirs) or 'none this model uses'}"
            + (f"; the lesson's: {', '.join(ours)}" if ours else ""))
