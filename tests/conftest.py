"""Shared fixtures: where the real MNIST lives, and small synthetic stand-ins."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def mnist_dir() -> Path | None:
    """$TWINNET_DATA if set (CI sets it), else ../shared/mnist beside the checkout."""
    if os.environ.get("TWINNET_DATA"):
        return Path(os.environ["TWINNET_DATA"])
    shared = REPO.parent / "shared" / "mnist"
    return shared if shared.is_dir() else None


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST splits; skipped only where no copy exists at all."""
    from twinnet.data import load_mnist

    directory = mnist_dir()
    if directory is None:
        pytest.skip("no MNIST copy: set TWINNET_DATA or place ../shared/mnist")
    return load_mnist(directory)


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    directory = mnist_dir()
    if directory is None:
        pytest.skip("no MNIST copy: set TWINNET_DATA or place ../shared/mnist")
    return directory


LINEAR_PRESETS = """
[models.linear]
optimizer = "sgd"
lr = 0.5
schedule = "constant"
steps = 50
batch_size = 100
seed = 0
lr_chosen_by = "a test"
twins = {tf = "P1:a", numpy = "P2:b"}
"""


@pytest.fixture
def presets_file(tmp_path) -> Path:
    """A presets file of the two linear twins at 50 steps: a report of two short runs."""
    path = tmp_path / "presets.toml"
    path.write_text(LINEAR_PRESETS)
    return path


# The draw-a-digit and watch pages' browser tests: one Chromium a module, driven by Playwright.
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("the browser test needs Chromium on PATH: on Debian or Ubuntu, "
                    "sudo apt-get install chromium (Playwright drives it and never downloads one)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
