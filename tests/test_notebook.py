"""notebooks/tour.ipynb runs from top to bottom with a small step budget, so it never
goes stale; its pictures come out as images."""

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
    assert len(images) >= 4  # the twins' curves, the saliency map and two layers
    assert any("| dense1 |" in out.get("data", {}).get("text/markdown", "") for out in outputs)
