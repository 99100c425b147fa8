"""The module map in docs/architecture.md, the import contract in pyproject.toml and
the package face agree (`lint-imports`, run by `make test`, checks the imports themselves)."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import twinnet

REPO = Path(__file__).resolve().parents[1]


def contract_layers() -> list[set[str]]:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["containers"] == ["twinnet"])["layers"]
    return [set(re.split(r"\s*[|:]\s*", layer)) for layer in layers]


def documented_layers() -> list[set[str]]:
    """The modules of each row of the layer table in docs/architecture.md, top to bottom."""
    text = (REPO / "docs/architecture.md").read_text()
    rows = re.findall(r"^\| \d\. [^|]+ \| (.+) \|$", text, flags=re.MULTILINE)
    return [set(re.findall(r"`([\w_]+)`", row)) for row in rows]


def test_the_documented_layers_are_the_contracts_layers():
    assert documented_layers() == contract_layers()


def test_every_module_is_in_a_layer_and_described():
    modules = {info.name for info in pkgutil.iter_modules(twinnet.__path__)} | {"__main__"}
    layered = set().union(*contract_layers())
    assert modules == layered
    text = (REPO / "docs/architecture.md").read_text()
    for name in modules:
        assert re.search(rf"^- `{name}/?`", text, flags=re.MULTILINE), f"{name} is not described"


def test_importing_models_loads_neither_commands_nor_the_api():
    code = "import sys, twinnet.models; print(sorted(m for m in sys.modules if m.startswith('twinnet')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "['twinnet', 'twinnet.errors', 'twinnet.models', 'twinnet.version']"


def test_the_package_face_loads_the_api_on_first_use():
    code = ("import sys, twinnet; assert 'twinnet.api' not in sys.modules\n"
            "from twinnet import train; assert 'twinnet.api' in sys.modules\n"
            "assert train is twinnet.api.train and 'train' in dir(twinnet)\n"
            "print(twinnet.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == twinnet.__version__ != ""
