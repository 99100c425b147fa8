"""A learner's ``layers.py``: checked, imported, and the names of the 14 it defines."""

from __future__ import annotations

import importlib.util
import os
import sys
import tokenize
from pathlib import Path
from types import ModuleType
from typing import Any

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


def load_lesson(path: str | os.PathLike) -> dict[str, Any]:
    """The learner's classes and functions by name, for ``--layers``: imported in this
    process (TwinnetError naming the line if importing fails)."""
    full = check_source(path)
    try:
        module = import_file(full)
    except Exception as exc:  # noqa: BLE001 (the learner's module code may raise anything)
        raise TwinnetError(f"importing {path} failed: {describe_exception(exc, full)}") from None
    lesson = {name: getattr(module, name) for name in defined(module)}
    if not lesson:
        raise TwinnetError(f"{path} defines none of the exercise's names ({', '.join(NAMES)})")
    return lesson
