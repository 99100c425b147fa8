"""The workspace of ``twinnet exercise start``: a ``layers.py`` made from the lesson's
own source, and a README with the order to work in.

The skeleton is generated from the lesson's modules with ``ast``, so it cannot drift
from them: each of the 14 names keeps its class name, bases, class attributes,
constructor (``__init__`` and helpers such as ``Conv2D.pad`` are interface, kept as
they are) and docstrings; the bodies that compute (``forward``, ``backward``, an
optimizer's ``step``, the loss function) become ``raise NotImplementedError``. The
helpers the kept code needs (``NoParams``, ``same_padding``) come along verbatim.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

from twinnet.errors import TwinnetError
from twinnet.exercise.names import NAMES, ORDER
from twinnet.numpy_nn import layers as lesson_layers
from twinnet.numpy_nn.network import LESSON

# Bodies that compute: what the learner writes.
COMPUTING = {"forward", "backward", "step"}
# Members left out of the skeleton: MaxPool2D.routing reads the lesson's own cache
# layout for gradient checks, which a learner's layer need not share.
LEFT_OUT = {("MaxPool2D", "routing")}
# Helpers the kept code uses, by the names that need them.
HELPERS = {"NoParams": lesson_layers.NoParams, "same_padding": lesson_layers.same_padding}

HEADER = '''"""Your layers: the lesson's classes and functions, to fill in.

Written by ``twinnet exercise start``. Each body that computes raises
NotImplementedError: replace it with your own derivation (docs/derivations.md has one
section per layer; the docstrings say the shapes, what forward keeps for backward and
what backward returns and fills in ``grads``). Check your work with
``twinnet exercise check layers.py``; train on it with ``twinnet train mlp128 --layers
layers.py``. See README.md beside this file for the order to work in.

The lesson's contract for every layer:
'''


def _node(name: str, obj: object) -> tuple[list[str], ast.AST]:
    """The source lines of ``obj``'s module and its top-level node."""
    source = inspect.getsource(sys.modules[obj.__module__])
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            return source.splitlines(), node
    raise LookupError(f"{name} not found in {obj.__module__}")  # the lesson itself changed


def _first_line(node: ast.AST) -> int:
    """The 1-based first line of a definition, its decorators included."""
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _stub(lines: list[str], fn: ast.FunctionDef) -> list[str]:
    """``fn``'s signature and docstring, its body replaced by ``raise NotImplementedError``."""
    body = fn.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    end = body[0].end_lineno if has_doc else body[0].lineno - 1
    kept = lines[_first_line(fn) - 1:end]
    indent = " " * body[0].col_offset
    return [*kept, f"{indent}raise NotImplementedError"]


def _definition(name: str, obj: object) -> str:
    """The skeleton of one of the 14 names, as source text."""
    lines, node = _node(name, obj)
    if isinstance(node, ast.FunctionDef):
        return "\n".join(_stub(lines, node))
    out = lines[_first_line(node) - 1:node.body[0].lineno - 1]  # the class line(s)
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and (name, item.name) in LEFT_OUT:
            continue
        if isinstance(item, ast.FunctionDef) and item.name in COMPUTING:
            out += ["", *_stub(lines, item)]
        else:
            if isinstance(item, ast.FunctionDef) or item is node.body[1]:
                out.append("")
            out += lines[_first_line(item) - 1:item.end_lineno]
    return "\n".join(out)


def _helper(name: str) -> str:
    lines, node = _node(name, HELPERS[name])
    return "\n".join(lines[_first_line(node) - 1:node.end_lineno])


def skeleton(names: tuple[str, ...] = NAMES) -> str:
    """The text of the workspace's ``layers.py`` for ``names`` (a subset of ``NAMES``),
    in the order of ``NAMES``."""
    chosen = [name for name in NAMES if name in names]
    bodies = [_definition(name, LESSON[name]) for name in chosen]
    helpers = [h for h in HELPERS if any(h in body for body in bodies)]
    contract = inspect.getdoc(lesson_layers) or ""
    # The lesson's module docstring from its contract on (its first line names the module).
    contract = contract.split("\n\n", 1)[1] if "\n\n" in contract else contract
    # ... up to where it speaks of the lesson's other modules.
    contract = contract.split(" These layers train", 1)[0]
    imports = ["from __future__ import annotations", ""]
    text = "\n\n".join(bodies + [_helper(h) for h in helpers])
    if "math." in text:
        imports.append("import math")
        imports.append("")
    imports.append("import numpy as np")
    parts = [HEADER + contract + '\n"""', "\n".join(imports),
             *(_helper(h) for h in helpers), *bodies]
    return "\n\n\n".join(parts) + "\n"


def readme(names: tuple[str, ...] = NAMES) -> str:
    """The workspace's README: the order to work in, the commands to check and to train."""
    lines = ["# Derive it yourself", "",
             "`layers.py` holds the lesson's classes and functions with their bodies left "
             "out: each `forward`, `backward`, optimizer `step` and the loss raise "
             "`NotImplementedError`. Fill them in, one at a time, from the derivations "
             "(docs/derivations.md in twinnet; each docstring names its section).", "",
             "Check a file at any time; only the names it implements are graded:", "",
             "```sh", "twinnet exercise check layers.py", "twinnet exercise check layers.py --only Dense",
             "```", "",
             "The check compares your forward with the lesson's, and your backward with finite "
             "differences of *your own* forward, with the lesson's layer and, where it is "
             "installed, with TensorFlow's autodiff; a failing name gets one line naming the "
             "array, its worst element and, where the error has a familiar shape, a hint.", "",
             "## The order to work in", ""]
    step = 0
    for group, model in ORDER:
        todo = [name for name in group if name in names]
        if not todo:
            continue
        step += 1
        then = f", then train `{model}` on them:" if model else "."
        lines.append(f"{step}. {', '.join(f'`{n}`' for n in todo)}{then}")
        if model:
            lines += ["", "   ```sh", f"   twinnet train {model} --layers layers.py --steps 500",
                      "   ```"]
        lines.append("")
    lines += ["When you train, a name whose body still raises `NotImplementedError` (or that you "
              "delete) comes from the lesson, so each stage trains as soon as its names pass. "
              "`--layers layers.py` also works with `twinnet evaluate`, `twinnet compare` (your "
              "layers beside TensorFlow's, layer by layer) and `twinnet gradcheck`.", ""]
    return "\n".join(lines)


def write_workspace(directory: str | Path, names: tuple[str, ...] = NAMES, force: bool = False) -> list[Path]:
    """Write ``layers.py`` and ``README.md`` into ``directory`` (created if missing);
    TwinnetError, before writing anything, where a file exists and ``force`` is not set."""
    directory = Path(directory)
    files = {directory / "layers.py": skeleton(names), directory / "README.md": readme(names)}
    if directory.exists() and not directory.is_dir():
        raise TwinnetError(f"{directory} exists and is not a folder")
    existing = [str(path) for path in files if path.exists()]
    if existing and not force:
        raise TwinnetError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                           "use --force to overwrite")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TwinnetError(f"cannot write the workspace in {directory}: {exc.strerror or exc}") from None
    return list(files)
