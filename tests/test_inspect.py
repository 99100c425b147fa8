"""twinnet compare, twinnet trace and the notebook API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from twinnet import cli
from twinnet.models import MODEL_NAMES, init_params
from twinnet.weights import save_weights

REPO = Path(__file__).resolve().parents[1]
CNN_WEIGHTS = REPO / "docs/report/runs/P2e-cnn-numpy/weights.npz"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this checkout's sources first on the path."""
    env_path = str(REPO / "src")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": env_path}, timeout=300)


# -- compare --------------------------------------------------------------------


@pytest.mark.tf
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_compare_passes_in_float64(model, capsys, mnist_path):
    pytest.importorskip("tensorflow")
    code, out, _ = run_cli(capsys, "compare", model, "--batch", "16", "--json",
                           "--data-dir", str(mnist_path))
    result = json.loads(out)
    assert code == 0 and result["passed"], result["failures"]
    assert result["data"] == "the first 16 MNIST test images"
    assert result["layers"][-1]["name"].startswith("dense")
    params = {row["name"]: row["params"] for row in result["layers"] if row["params"]}
    assert all(set(p) == {"W", "b"} for p in params.values())
    assert abs(result["loss"]["numpy"] - result["loss"]["tf"]) <= 1e-12 * result["loss"]["tf"]


@pytest.mark.tf
def test_compare_names_the_layer_with_a_planted_gradient_bug(capsys, monkeypatch, mnist_path):
    """A 0.1% error in conv2's weight gradient (only conv2: its input has 16 channels) must
    fail compare, in that layer's row and nowhere else."""
    pytest.importorskip("tensorflow")
    from twinnet.numpy_nn import layers

    correct_backward = layers.Conv2D.backward

    def wrong_backward(self, dz):
        dx = correct_backward(self, dz)
        if self.W.shape[2] == 16:
            self.grads[f"{self.name}/W"] = self.grads[f"{self.name}/W"] * 1.001
        return dx

    monkeypatch.setattr(layers.Conv2D, "backward", wrong_backward)
    code, out, _ = run_cli(capsys, "compare", "cnn", "--batch", "8", "--data-dir", str(mnist_path))
    assert code == 1
    failing = [line.split()[0] for line in out.splitlines() if line.endswith("FAIL")]
    assert failing == ["conv2"]
    assert "FAIL: conv2: W gradient relative error" in out


@pytest.mark.tf
def test_compare_reads_the_model_from_the_weights_and_refuses_a_mismatch(capsys, tmp_path):
    pytest.importorskip("tensorflow")
    path = tmp_path / "w.npz"
    save_weights(path, "mlp128", init_params("mlp128", seed=3), {"backend": "test"})
    code, out, _ = run_cli(capsys, "compare", "--weights", str(path), "--batch", "4",
                           "--data-dir", str(tmp_path / "nothing-here"))
    assert code == 2  # an explicit --data-dir must hold MNIST
    code, out, err = run_cli(capsys, "compare", "linear", "--weights", str(path))
    assert code == 2 and "not 'linear'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.tf
def test_compare_uses_a_seeded_random_batch_without_mnist(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow")
    import twinnet

    monkeypatch.setenv("TWINNET_DATA", str(tmp_path))  # an empty folder: no MNIST
    first = twinnet.compare("linear", batch=5, dtype="float32", seed=4)
    again = twinnet.compare("linear", batch=5, dtype="float32", seed=4)
    assert first.passed and "seeded random" in first.data
    assert first.loss == again.loss


# -- trace ----------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_derivation_links_point_at_existing_sections():
    from twinnet.comparison import SECTIONS

    headings = re.findall(r"^#+ (.+)$", (REPO / "docs/derivations.md").read_text(), re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    assert set(SECTIONS.values()) <= anchors


@pytest.mark.tf
def test_trace_writes_pictures_and_tables_quickly(tmp_path, mnist_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "trace"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "twinnet", "trace", "--index", "0", "--weights",
                           str(CNN_WEIGHTS), "--out", str(out), "--data-dir", str(mnist_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert seconds < 30  # 4-5 s measured; the acceptance bound is 10 s on an idle machine
    result = json.loads((out / "trace.json").read_text())
    assert result["label"] == 7 and result["label_source"] == "true label"
    assert result["predicted"] == {"numpy": 7, "tf": 7}
    assert [row["layer"] for row in result["layers"]] == [
        "input", "conv1", "relu1", "maxpool1", "conv2", "relu2", "maxpool2", "flatten1",
        "dense1", "relu3", "dense2", "loss"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted([f"{i:02d}-{r['layer']}.png" for i, r in enumerate(result["layers"][1:-1], 1)]
                          + ["saliency.png"])
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    table = (out / "trace.md").read_text()
    assert "derivations.md#4-convolution" in table and "[png](saliency.png)" in table


@pytest.mark.tf
def test_trace_reads_the_test_image_as_load_mnist_does(mnist, mnist_path):
    from twinnet.tracing import load_image

    x, label, _ = load_image(9999, None, mnist_path)
    np.testing.assert_array_equal(x, mnist.test.x[9999:])
    assert label == mnist.test.y[9999]


def test_trace_of_a_user_image_uses_the_predicted_digit(tmp_path):
    pytest.importorskip("tensorflow")
    from PIL import Image, ImageDraw

    import twinnet

    picture = Image.new("L", (200, 260), 255)
    ImageDraw.Draw(picture).line([(40, 40), (160, 40), (90, 230)], fill=0, width=18)  # a seven
    picture.save(tmp_path / "seven.png")
    result = twinnet.trace(CNN_WEIGHTS, image=tmp_path / "seven.png", pictures=False, dtype="float64")
    assert result.label_source == "the digit the NumPy twin predicts"
    assert result.label == result.predicted["numpy"] == result.predicted["tf"]
    assert result.numpy.grad_input.shape == (1, 28, 28, 1)
    assert "| conv1 |" in result._repr_markdown_()
    for row in result.rows:
        assert row["max_gradient_diff"] <= 1e-8 * row["gradient_norm"], row["layer"]


def test_trace_needs_exactly_one_image(capsys):
    code, _, err = run_cli(capsys, "trace", "--weights", str(CNN_WEIGHTS))
    assert code == 2 and "either --index" in err


# -- the notebook API, plots, installs without TensorFlow --------------------------------


def test_import_twinnet_imports_neither_tensorflow_nor_matplotlib():
    proc = python("import sys, twinnet\n"
                  "assert callable(twinnet.compare) and callable(twinnet.trace)\n"
                  "import twinnet.comparison, twinnet.tracing\n"
                  "assert callable(twinnet.compare), 'the submodule shadowed the function'\n"
                  "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', "
                  "'matplotlib'}))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_plots_return_figures_and_select_no_backend(tmp_path):
    proc = python("import matplotlib\n"
                  "before = matplotlib.rcParams._get_backend_or_none()\n"
                  "from twinnet.plots import plot_curves\n"
                  "assert matplotlib.rcParams._get_backend_or_none() == before, 'backend chosen'\n"
                  "c = dict(step=[1, 2], train_loss=[2.0, 1.0], train_accuracy=[0.1, 0.5],\n"
                  "         val_loss=[2.0, 1.1], val_accuracy=[0.1, 0.4])\n"
                  "fig = plot_curves(c, 'x', __import__('sys').argv[1])\n"
                  "print(type(fig).__name__)", str(tmp_path / "c.png"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Figure" and (tmp_path / "c.png").stat().st_size > 0


def test_api_loads_the_model_named_in_the_weights_and_trains(mnist, tmp_path):
    import twinnet

    model = twinnet.load_model(weights=CNN_WEIGHTS, backend="numpy")
    assert model.model_name == "cnn"
    first = mnist.test.x[:200], mnist.test.y[:200]
    assert twinnet.evaluate(model, *first)["accuracy"] > 0.95
    trained, metrics = twinnet.train("linear", backend="numpy", steps=30, data=mnist, progress=False,
                                     lr=0.5)
    assert metrics["config"]["steps"] == 30 and metrics["final"]["test"]["accuracy"] > 0.7
    twinnet.save_weights(trained, tmp_path / "linear.npz", note="api test")
    again = twinnet.load_model(weights=tmp_path / "linear.npz", backend="numpy")
    np.testing.assert_array_equal(again.params["dense1/W"], trained.params["dense1/W"])


# As if TensorFlow and Keras were not installed: their imports fail as a missing module's do.
NO_TF = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from twinnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


OR_NUMPY = " (or use the NumPy twin, --backend numpy)"


@pytest.mark.parametrize("command, alternative", [
    (["train", "linear", "--backend", "tf", "--steps", "5"], OR_NUMPY),
    (["evaluate", "--weights", str(CNN_WEIGHTS), "--backend", "tf"], OR_NUMPY),
    (["compare", "linear"], ""),  # compare runs both twins: it has no --backend to suggest
])
def test_without_tensorflow_commands_that_need_it_print_the_install_hint(command, alternative, tmp_path,
                                                                          mnist_path):
    # The hint as this environment gives it (the checkout's src first on the path, as below).
    hint = python("from twinnet.environment import install_command; print(install_command('tf'))")
    proc = python(NO_TF, *command, "--data-dir", str(mnist_path),
                  *(["--out", str(tmp_path / "run")] if command[0] == "train" else []))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "twinnet: error: this needs TensorFlow, which is not installed: "
        f"{hint.stdout.strip()}{alternative}"]


def test_without_tensorflow_the_numpy_twin_trains(tmp_path, mnist_path):
    proc = python(NO_TF, "train", "linear", "--backend", "numpy", "--steps", "50", "--data-dir",
                  str(mnist_path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "weights.npz").is_file()
