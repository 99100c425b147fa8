"""What the wheel ships: the cnn weights `twinnet serve` needs, inside the package.

The whole wheel is exercised by scripts/wheel_smoke.sh (run by CI): built, installed in a
fresh venv and used from a folder outside the clone."""

from __future__ import annotations

import tomllib
from pathlib import Path

from twinnet.serve import DEFAULT_WEIGHTS
from twinnet.weights import PRETRAINED_CNN, load_weights

REPO = Path(__file__).resolve().parents[1]
REPORT_CNN = REPO / "docs/report/runs/P2e-cnn-numpy/weights.npz"


def test_serve_defaults_to_the_weights_inside_the_package():
    package = Path(__import__("twinnet").__file__).parent
    assert DEFAULT_WEIGHTS == PRETRAINED_CNN
    assert PRETRAINED_CNN.is_relative_to(package) and PRETRAINED_CNN.is_file()
    assert load_weights(PRETRAINED_CNN)[1]["model"] == "cnn"
    assert PRETRAINED_CNN.stat().st_size < 1_000_000


def test_packaged_cnn_is_the_report_cnn():
    # Retraining the report changes docs/report; copy the new file into the package too.
    assert PRETRAINED_CNN.read_bytes() == REPORT_CNN.read_bytes()


def test_package_data_lists_the_weights():
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "pretrained/*.npz" in package_data["twinnet"]
