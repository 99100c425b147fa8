"""notebooks/tour.ipynb runs from top to bottom with a small step budget, so it never
goes stale; its pictures come out as images, each training run leaves one progress line and
TensorFlow's start-up lines none. The committed file carries its outputs (`make notebook`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOUR = REPO / "notebooks" / "tour.ipynb"


@pytest.mark.tf
def test_tour_notebook_runs(mnist_path, monkeypatch):
    pytest.importorskip("tensorflow")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TWINNET_TOUR_STEPS", "20")
    monkeypatch.setenv("TWINNET_DATA", str(mnist_path))
    # The kernel imports this checkout's twinnet, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                   os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(TOUR, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(TOUR.parent)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 8  # the twins' curves, the saliency maps, two layers, cnn filters and maps
    tables = [out.get("data", {}).get("text/markdown", "") for out in outputs]
    assert any("| dense1 |" in table for table in tables)
    assert any("| conv1 |" in table and "| maxpool2 |" in table for table in tables)  # the cnn's trace
    printed = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "largest difference between the twins' conv1 weights" in printed
    assert "cnn (float64) on the first 16 MNIST test images" in printed and "PASS" in printed
    stderr = "".join(out.text for out in outputs if out.output_type == "stream" and out.name == "stderr")
    assert "IProgress" not in stderr and "oneDNN" not in stderr and "absl" not in stderr
    assert stderr.count("100%") == 6 and len(stderr.splitlines()) == 6  # one line per training run


def test_tour_speaks_the_api_and_needs_no_development_path():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(TOUR, as_version=4)
    code = "".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "shared/mnist" not in code  # the Makefile's TWINNET_DATA covers development
    # The tour speaks of Python's label=, not of the command line's --label.
    assert "--label" not in "".join(cell.source for cell in notebook.cells) and "label=3" in code


def test_committed_tour_has_its_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(TOUR, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs for cell in code), "run `make notebook` and commit notebooks/tour.ipynb"
    images = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 4
