"""twinnet trace for a reader: --label, no negative zero, pictures 1200 px wide with their
units labelled and no blank cells unexplained, and a word where the twins' maps coincide."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twinnet.plots import layout_note, mosaic, plot_layer, scaled, vector_grid
from twinnet.weights import DEFAULT_WEIGHTS, save_weights

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(("n", "grid"), [(128, (8, 16)), (256, (16, 16)), (784, (28, 28)), (10, (2, 5))])
def test_dense_units_fill_their_grid(n, grid):
    assert vector_grid(n) == grid
    assert not np.isnan(mosaic(np.arange(n, dtype=float))).any()
    assert "empty" not in layout_note(np.zeros(n)) or n <= 16


def test_a_count_with_no_grid_says_which_cells_are_empty():
    assert np.isnan(mosaic(np.arange(131, dtype=float))).sum() == 1  # 131 is prime: 11x12 - 131
    assert "131 units as a 11x12 grid, row by row (the last cell is empty)" == layout_note(np.zeros(131))
    assert "the last 3 cells are empty" in layout_note(np.zeros(97))  # 10x10 - 97


def test_tiny_values_carry_their_power_of_ten_in_the_label():
    values, factor = scaled(np.array([3e-6, -5e-6]))
    assert np.allclose(values, [3, -5]) and factor == "×10$^{-6}$"
    assert scaled(np.array([0.5, -2.0]))[1] == ""


def test_layer_figure_is_1200_px_with_labelled_units_and_no_offset_text(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    fig = plot_layer("a layer", rng.normal(size=128), rng.normal(size=128) * 1e-6, tmp_path / "l.png")
    assert Image.open(tmp_path / "l.png").size[0] == 1200
    fig.canvas.draw()  # lays out the offset texts
    colorbars = [ax for ax in fig.axes if ax.get_ylabel()]
    labels = [ax.get_ylabel() for ax in colorbars]
    assert labels == ["output value", "dL/d(output), nats per unit ×10$^{-6}$"]
    assert all(ax.yaxis.get_offset_text().get_text() == "" for ax in colorbars)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "128 units as a 8x16 grid, row by row" in titles


def sure_linear_weights(path: Path, digit: int) -> Path:
    """A linear model that calls every image ``digit`` with probability 1 in float32."""
    params = {"dense1/W": np.zeros((784, 10), np.float32), "dense1/b": np.zeros(10, np.float32)}
    params["dense1/b"][digit] = 200.0
    save_weights(path, "linear", params, {"backend": "numpy"})
    return path


@pytest.mark.tf
def test_a_sure_model_prints_zero_not_minus_zero_and_suggests_label(tmp_path, mnist_path):
    pytest.importorskip("tensorflow")
    import twinnet

    weights = sure_linear_weights(tmp_path / "sure.npz", 7)
    result = twinnet.trace(weights, index=0, pictures=False, data_dir=mnist_path)  # test image 0 is a 7
    assert result.loss["numpy"] == 0.0 and np.copysign(1.0, result.loss["numpy"]) == 1.0
    table = result.markdown()
    assert "-0 " not in table and "-0," not in table and "-0." not in table
    assert "NumPy 0, TF 0 nats" in table and "--label D" in table
    assert "-0.0" not in json.dumps(result.to_json())


@pytest.mark.tf
def test_label_takes_the_loss_against_that_digit(tmp_path, mnist_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "trace"
    done = subprocess.run([sys.executable, "-m", "twinnet", "trace", "--index", "0", "--label", "3",
                           "--weights", str(DEFAULT_WEIGHTS), "--out", str(out), "--data-dir",
                           str(mnist_path)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "trace.json").read_text())
    assert result["label"] == 3 and result["label_source"] == "the label asked for"
    assert result["predicted"]["numpy"] == 7  # the model still reads a 7 ...
    assert result["loss"]["numpy"] > 1  # ... so the loss against 3 is large, and so are the gradients
    assert result["layers"][0]["gradient_norm"] > 1e-2
    from PIL import Image

    assert Image.open(out / "saliency.png").size[0] == 1200
    assert Image.open(out / "08-dense1.png").size[0] == 1200


def test_label_must_be_a_digit(capsys):
    from twinnet.cli import main

    assert main(["trace", "--index", "0", "--label", "10", "--weights", str(DEFAULT_WEIGHTS)]) == 2
    assert "twinnet: error: --label must be a digit 0..9, got 10" in capsys.readouterr().err


@pytest.mark.tf
def test_saliency_says_the_twins_maps_coincide(mnist_path):
    pytest.importorskip("tensorflow")
    import twinnet

    result = twinnet.trace(DEFAULT_WEIGHTS, index=0, label=3, data_dir=mnist_path)
    assert "the two maps coincide" in result.figures["saliency.png"]._suptitle.get_text()
