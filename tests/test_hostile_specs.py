"""Spec files are hostile input too (issue 32): a FIFO, a link to /dev/zero, a huge or
deeply nested file, values out of range, too many layers or parameters, a model too large
for memory, through every command and inside a weights file; an edited spec is never
resumed silently; run folders stay inside runs/ and never replace another model's run;
trace infers as the model does; Ctrl-C ends train and report within seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from twinnet import memory, models
from twinnet.checkpoint import CHECKPOINT_NAME, load_checkpoint, read_checkpoint, save_checkpoint
from twinnet.cli import main
from twinnet.errors import TwinnetError
from twinnet.runs import safe_name

TAIL = '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 10\n'
DENSE = '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = {units}\n' \
        '[[layers]]\ntype = "dense"\nunits = 10\n'

# name -> (file content, or a special kind; a fragment of the one error line)
HOSTILE = {
    "fifo": ("FIFO", "not a regular file"),
    "dev-zero": ("/dev/zero", "not a regular file"),
    "oversized": ("# " + "x" * models.SPEC_MAX_BYTES + "\n" + TAIL, "more than the 65,536"),
    "nested": ("name = " + "[" * 5000 + "]" * 5000 + "\n" + TAIL, "nested too deeply"),
    "kernel-1000": ('[[layers]]\ntype = "conv2d"\nfilters = 4\nkernel = 1000\npadding = "same"\n' + TAIL,
                    "layer 1 (conv2d): kernel must be at most 28"),
    "units-200000": (DENSE.format(units=200_000), "units must be at most 65,536"),
    "units-1e9": (DENSE.format(units=10**9), "units must be at most 65,536"),
    "too-many-params": (DENSE.format(units=60_000).replace('type = "dense"\nunits = 10\n',
                                                          'type = "dense"\nunits = 60000\n[[layers]]\n'
                                                          'type = "dense"\nunits = 10\n'),
                        "parameters, more than the 33,554,432"),
    "alpha-1e308": ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "leaky_relu"\nalpha = 1e308\n'
                    '[[layers]]\ntype = "dense"\nunits = 10\n', "alpha must be in [0, 1]"),
    "rate-nan": ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dropout"\nrate = nan\n'
                 '[[layers]]\ntype = "dense"\nunits = 10\n', "rate must be a finite number"),
    "epsilon-inf": ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "batchnorm"\nepsilon = inf\n'
                    '[[layers]]\ntype = "dense"\nunits = 10\n', "epsilon must be a finite number"),
    "501-layers": ('[[layers]]\ntype = "flatten"\n' + '[[layers]]\ntype = "relu"\n' * 499 + TAIL[27:],
                   "501 layers, more than the 500"),
}


def hostile_spec(folder: Path, case: str) -> Path:
    content, _ = HOSTILE[case]
    path = folder / f"{case}.toml"
    if content == "FIFO":
        os.mkfifo(path)
    elif content == "/dev/zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_text(content)
    return path


def commands(spec: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that takes a MODEL, on ``spec``; report through a presets file."""
    presets = tmp / "presets.toml"
    presets.write_text(f'[models."{spec}"]\noptimizer = "sgd"\nlr = 0.1\nschedule = "constant"\n'
                       'steps = 5\nbatch_size = 10\nseed = 0\nlr_chosen_by = "a test"\n'
                       'twins = {numpy = "X:a"}\n')
    return {"train": ["train", str(spec), "--out", str(tmp / "run")],
            "train --reference": ["train", str(spec), "--reference", "--out", str(tmp / "run")],
            "train --backend tf": ["train", str(spec), "--backend", "tf", "--out", str(tmp / "run")],
            "gradcheck": ["gradcheck", str(spec)],
            "bench": ["bench", "--models", str(spec), "--backends", "numpy", "--repeats", "1"],
            "compare": ["compare", str(spec)],
            "sweep": ["sweep", str(spec), "--out", str(tmp / "sweeps")],
            "report": ["report", "--presets", str(presets), "--out", str(tmp / "report")]}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("twinnet: error: "), err
    return err[0]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_spec_is_one_line_under_every_command_before_any_work(tmp_path, capsys, monkeypatch,
                                                                          case):
    monkeypatch.setenv("TWINNET_DATA", str(tmp_path / "no-mnist-here"))  # refused before the data
    spec = hostile_spec(tmp_path, case)
    for command, argv in commands(spec, tmp_path).items():
        started = time.monotonic()
        assert main(argv) == 2, command
        line = one_error_line(capsys)
        assert str(spec) in line and HOSTILE[case][1] in line, (command, line)
        assert time.monotonic() - started < 5, command
        assert not (tmp_path / "run").exists() and not (tmp_path / "report" / "runs").exists()


def test_a_fifo_spec_never_blocks_a_process(tmp_path):
    spec = hostile_spec(tmp_path, "fifo")
    for argv in (["train", str(spec), "--backend", "tf"], ["compare", str(spec)]):
        done = subprocess.run([sys.executable, "-m", "twinnet", *argv], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "not a regular file" in done.stderr


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "nested"])
def test_a_hostile_presets_file_is_one_line(tmp_path, capsys, case):
    path = hostile_spec(tmp_path, case)
    assert main(["report", "--presets", str(path), "--out", str(tmp_path / "report")]) == 2
    assert "cannot read presets" in one_error_line(capsys)


def weights_carrying(tmp_path: Path, document: dict, name: str = "carried") -> Path:
    """A weights file of a small model whose meta carries ``document`` as its spec (the
    arrays stay the small model's: the spec is refused before they matter)."""
    from twinnet.weights import save_weights

    small = tmp_path / "small.toml"
    small.write_text(f'name = "{name}"\n' + TAIL)
    path = tmp_path / "carrier.npz"
    save_weights(path, str(small), models.init_params(str(small)), {})
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "spec": document}))
    np.savez(path, **arrays)
    return path


def digit_png(path: Path) -> Path:
    from PIL import Image

    image = Image.new("L", (28, 28))
    image.paste(255, (12, 4, 16, 24))  # a 1
    image.save(path)
    return path


WEIGHTS_COMMANDS = {
    "evaluate": lambda w, tmp: ["evaluate", "--weights", str(w)],
    "predict": lambda w, tmp: ["predict", str(tmp / "digit.png"), "--weights", str(w)],
    "trace": lambda w, tmp: ["trace", str(tmp / "digit.png"), "--weights", str(w), "--out", str(tmp / "t")],
    "compare": lambda w, tmp: ["compare", "--weights", str(w)],
}


@pytest.mark.parametrize(("layers", "fragment"), [
    ([{"type": "flatten"}] + [{"type": "relu"}] * 10_000 + [{"type": "dense", "units": 10}],
     "10,002 layers, more than the 500"),
    ([{"type": "conv2d", "filters": 4, "kernel": 1000}, {"type": "flatten"}, {"type": "dense", "units": 10}],
     "kernel must be at most 28"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10**9}, {"type": "dense", "units": 10}],
     "units must be at most 65,536"),
])
def test_a_hostile_spec_inside_a_weights_file_is_one_line(tmp_path, capsys, layers, fragment):
    digit_png(tmp_path / "digit.png")
    weights = weights_carrying(tmp_path, {"name": "carried", "layers": layers})
    for command, argv in WEIGHTS_COMMANDS.items():
        assert main(argv(weights, tmp_path)) == 2, command
        line = one_error_line(capsys)
        assert str(weights) in line and fragment in line, (command, line)


# -- memory: estimated from the spec, refused before anything is allocated --------------

# Few parameters (49,000) but 28x28x4096 activations an image: 12.8 GB for 1,000 images.
ACTIVATION_BOMB = {"name": "bomb", "layers": [
    {"type": "conv2d", "filters": 4096, "kernel": 1}, {"type": "conv2d", "filters": 10, "kernel": 1},
    {"type": "maxpool2d", "size": 28}, {"type": "flatten"}]}
# A 28x28 kernel over 64 channels, 'same': 28*28*64 values of im2col per pixel.
IM2COL_BOMB = ('[[layers]]\ntype = "conv2d"\nfilters = 64\nkernel = 3\n[[layers]]\ntype = "conv2d"\n'
               'filters = 8\nkernel = 28\n[[layers]]\ntype = "maxpool2d"\nsize = 28\n[[layers]]\n'
               'type = "flatten"\n[[layers]]\ntype = "dense"\nunits = 10\n')


def test_the_estimate_names_the_layer_that_makes_a_model_large(tmp_path):
    spec = tmp_path / "im2col.toml"
    spec.write_text(IM2COL_BOMB)
    found = memory.estimate(str(spec), 100, training=True)
    assert found.layer == 2 and found.layer_name == "layer 2 (conv2d, conv2)"
    assert "im2col columns (28x28 pixels x 28x28x64 values, 100 images)" in found.what
    assert found.layer_bytes >= 28 * 28 * 28 * 28 * 64 * 100 * 4  # 15.7 GB of columns
    float64 = memory.estimate(str(spec), 100, training=True, itemsize=8)
    assert float64.total > 1.9 * found.total
    # Adam's two slots and the TF twin's variables count; inference holds one layer at a time.
    assert memory.estimate("mlp256x2", 100, training=True, optimizer="adam").total > \
        memory.estimate("mlp256x2", 100, training=True).total
    assert memory.estimate("cnn", 100, training=True, path="tf").total > \
        memory.estimate("cnn", 100, training=True, path="reference").total
    inferring = memory.estimate("cnn", 1000, training=False).total
    assert inferring < memory.estimate("cnn", 1000, training=True).total


def test_the_fast_paths_inference_chunk_is_estimated_as_it_is_cut(tmp_path):
    from twinnet.numpy_nn.fast import budgets

    assert memory.FAST_ACTIVATION_BYTES == budgets.ACTIVATION_BYTES
    spec = tmp_path / "im2col.toml"
    spec.write_text(IM2COL_BOMB)  # 28x28x64 outputs: 5 images a chunk on the fast path
    fast = memory.estimate(str(spec), 1000, training=False, path="fast")
    reference = memory.estimate(str(spec), 1000, training=False, path="reference")
    assert "5 images" in fast.what and "1000 images" in reference.what
    assert fast.total * 20 < reference.total


@pytest.mark.parametrize("model", models.NAMED_MODELS)
def test_the_built_in_models_fit_well_within_a_small_machine(model):
    for path in memory.PATHS:
        assert memory.estimate(model, 100, training=True, path=path, optimizer="adam", parts=2).total < 100e6
        assert memory.estimate(model, 1000, training=False, path=path).total < 200e6


@pytest.mark.parametrize("argv", [
    ["train", "SPEC"], ["train", "SPEC", "--reference"], ["train", "SPEC", "--backend", "tf"],
    ["gradcheck", "SPEC"], ["compare", "SPEC"], ["bench", "--models", "SPEC", "--backends", "numpy"],
    ["sweep", "SPEC"], ["--max-memory", "600M", "bench", "--blocks", "--models", "SPEC"],
    ["report", "--presets", "PRESETS"],
])
def test_a_model_over_the_memory_budget_is_one_line_naming_its_layer_and_allocates_nothing(
        tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWINNET_DATA", str(tmp_path / "no-mnist-here"))
    spec = tmp_path / "im2col.toml"
    spec.write_text(IM2COL_BOMB)
    presets = commands(spec, tmp_path)["report"][2]
    argv = [str(spec) if a == "SPEC" else presets if a == "PRESETS" else a for a in argv]
    tracemalloc.start()
    try:
        code = main([*argv, "--max-memory", "600M"] if argv[0] != "--max-memory" else argv)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2
    line = one_error_line(capsys)
    assert "more than the --max-memory budget of 600M" in line and "layer 2 (conv2d, conv2)" in line, line
    assert "im2col columns" in line
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated before the refusal"
    assert not (tmp_path / "runs").exists()
    assert memory.MAX_MEMORY_ENV not in os.environ  # the budget was this command's only


# The fast path infers the bomb one image at a time (12.8 MB an output): budgets below that.
@pytest.mark.parametrize(("command", "budget"), [("evaluate", "10M"), ("predict", "10M"), ("compare", "1G"),
                                               ("trace", "20M")])
def test_a_spec_in_a_weights_file_over_the_budget_is_refused_before_the_model_is_built(
        tmp_path, capsys, command, budget):
    digit_png(tmp_path / "digit.png")
    spec = tmp_path / "bomb.toml"
    spec.write_text("\n".join(["name = \"bomb\""] + [
        "[[layers]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in layer.items())
        for layer in ACTIVATION_BOMB["layers"]]) + "\n")
    from twinnet.weights import save_weights

    weights = tmp_path / "bomb.npz"
    save_weights(weights, str(spec), models.init_params(str(spec)), {})
    tracemalloc.start()
    try:
        code = main([*WEIGHTS_COMMANDS[command](weights, tmp_path), "--max-memory", budget])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2
    line = one_error_line(capsys)
    # The 4096 channels: conv1's output, conv2's columns in training.
    assert "bomb needs about" in line and ("layer 1 (conv2d, conv1)" in line or
                                          "layer 2 (conv2d, conv2)" in line), line
    assert peak < 40e6


def test_the_budget_is_the_smallest_of_the_flag_the_limit_and_the_machine(monkeypatch):
    monkeypatch.setenv(memory.MAX_MEMORY_ENV, "3G")
    assert memory.budget()[0] == min(3 << 30, memory.available_bytes())
    assert memory.parse_size("1.5G") == 3 << 29 and memory.parse_size("500M") == 500 << 20
    for bad in ("lots", "12X", "-1G", "100K"):
        with pytest.raises(TwinnetError, match="--max-memory must be"):
            memory.parse_size(bad)


def test_a_bad_max_memory_is_one_line(capsys):
    assert main(["gradcheck", "linear", "--max-memory", "plenty"]) == 2
    assert "--max-memory must be a size such as 500M or 2G, got 'plenty'" in one_error_line(capsys)


def test_numpy_floating_point_warnings_become_the_one_line_error(monkeypatch, capsys):
    from twinnet.commands import gradcheck

    def overflowing(args):
        return int(np.float32(1e30) * np.float32(1e30) > 0)

    monkeypatch.setattr(gradcheck, "run", overflowing)
    assert main(["gradcheck", "linear"]) == 2
    line = one_error_line(capsys)
    assert "numerical fault: overflow encountered" in line


# -- a run keeps its spec ------------------------------------------------------------------

ORIGINAL = ('name = "edited"\n[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 16\n'
            '[[layers]]\ntype = "relu"\n[[layers]]\ntype = "dropout"\nrate = 0.1\n[[layers]]\n'
            'type = "dense"\nunits = 10\n')


def interrupted_spec_run(tmp_path: Path, mnist, content: str = ORIGINAL) -> tuple[Path, Path]:
    """(spec file, run folder) of a run of ``content`` stopped at step 5 of 10, checkpoint kept."""
    from twinnet.config import TrainConfig
    from twinnet.training import train

    spec = tmp_path / "net.toml"
    spec.write_text(content)
    run = tmp_path / "run"
    run.mkdir()
    train(TrainConfig(model=str(spec), steps=10, batch_size=20), mnist, progress=False,
          checkpoint=run / CHECKPOINT_NAME, checkpoint_every=5)
    assert read_checkpoint(run / CHECKPOINT_NAME)["step"] == 5
    return spec, run


def test_resume_after_an_edited_spec_trains_the_stored_spec_and_says_so(tmp_path, mnist, mnist_path,
                                                                        capsys):
    spec, run = interrupted_spec_run(tmp_path, mnist)
    stored = read_checkpoint(run / CHECKPOINT_NAME)["spec"]
    assert stored["layers"][2]["type"] == "relu" and stored["layers"][3]["rate"] == 0.1
    spec.write_text(ORIGINAL.replace("relu", "sigmoid").replace("0.1", "0.9").replace("units = 16",
                                                                                      "units = 32"))
    assert main(["train", "--resume", str(run), "--data-dir", str(mnist_path)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("twinnet: ")]
    assert notes == [f"twinnet: note: {spec} has changed since this run started; resuming with the spec "
                     "its checkpoint stores (train a new run to use the file as it is now)"]
    with np.load(run / "weights.npz", allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
        assert archive["dense1/W"].shape == (784, 16)
    assert meta["spec"] == stored  # relu and 0.1, as the steps before and after ran


def test_resume_after_the_spec_file_is_gone_trains_the_stored_spec(tmp_path, mnist, mnist_path, capsys):
    spec, run = interrupted_spec_run(tmp_path, mnist)
    spec.unlink()
    assert main(["train", "--resume", str(run), "--data-dir", str(mnist_path)]) == 0
    assert "cannot be read as it was when this run started" in capsys.readouterr().err
    assert (run / "weights.npz").is_file()


def test_a_checkpoint_of_a_spec_without_its_spec_is_refused(tmp_path, mnist, capsys):
    spec, run = interrupted_spec_run(tmp_path, mnist)
    state = read_checkpoint(run / CHECKPOINT_NAME)
    del state["spec"]
    save_checkpoint(run / CHECKPOINT_NAME, state)
    assert main(["train", "--resume", str(run)]) == 2
    assert "holds no copy of the spec" in one_error_line(capsys)


def test_a_larger_spec_checkpoint_is_read_under_the_bounds_of_its_stored_spec(tmp_path, mnist):
    """Larger than the built-in models: read by read_spec_checkpoint, whose exact bounds
    must come from the stored spec, not the edited file's (which would refuse the arrays)."""
    big = ORIGINAL.replace("units = 16", "units = 600")
    spec, run = interrupted_spec_run(tmp_path, mnist, big)
    spec.write_text(big.replace("units = 600", "units = 700"))
    config, state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["params"]["dense1/W"].shape == (784, 600)
    assert models.param_shapes(config.model)["dense1/W"] == (784, 600)


# -- run folders --------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "folder"), [
    ("../../etc/x", "etc_x"), ("/some/absolute/x", "some_absolute_x"), ("..", "spec"), ("", "net"),
    ("my net (v2)", "my_net_v2"), ("ünïcode", "n_code"), (".hidden", "hidden"), ("a" * 300, "a" * 100),
])
def test_a_spec_name_becomes_one_plain_folder_name(tmp_path, name, folder):
    spec = tmp_path / "net.toml"
    spec.write_text(f"name = {json.dumps(name)}\n" + TAIL)
    assert safe_name(str(spec)) == folder
    assert Path("runs", folder).resolve().parent == Path("runs").resolve()


def test_spec_names_never_leave_runs_nor_replace_another_models_run(tmp_path, monkeypatch, mnist_path,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    data = ["--steps", "2", "--data-dir", str(mnist_path)]
    assert main(["train", "linear", *data]) == 0
    builtin = (tmp_path / "runs" / "linear-numpy" / "weights.npz").read_bytes()
    for name in ("linear", "../linear", "/linear"):
        (tmp_path / "s.toml").write_text(f"name = {json.dumps(name)}\n" + TAIL)
        capsys.readouterr()
        assert main(["train", "s.toml", *data]) == 2
        assert "is the built-in model linear's" in one_error_line(capsys)
        assert main(["train", "s.toml", "--out", "runs/linear-numpy", *data]) == 2
        assert "holds a run of the built-in model linear" in one_error_line(capsys)
    assert (tmp_path / "runs" / "linear-numpy" / "weights.npz").read_bytes() == builtin

    (tmp_path / "a.toml").write_text('name = "../../escape"\n' + TAIL)
    assert main(["train", "a.toml", *data]) == 0
    assert (tmp_path / "runs" / "escape-numpy" / "weights.npz").is_file()
    assert not (tmp_path.parent / "escape-numpy").exists()
    first = (tmp_path / "runs" / "escape-numpy" / "weights.npz").read_bytes()
    (tmp_path / "b.toml").write_text('name = "escape"\n' + TAIL.replace("flatten", "flatten\"\n[[layers]]\n"
                                                                        "type = \"relu"))
    capsys.readouterr()
    assert main(["train", "b.toml", *data]) == 2
    assert "holds the run of another spec named 'escape'" in one_error_line(capsys)
    assert (tmp_path / "runs" / "escape-numpy" / "weights.npz").read_bytes() == first
    assert main(["train", "a.toml", *data, "--seed", "3"]) == 0  # the same spec: its own run, replaced
    assert main(["train", "b.toml", *data, "--force"]) == 0  # said in so many words


# -- trace infers as the model does ---------------------------------------------------------

@pytest.mark.tf
def test_trace_loss_equals_the_inference_loss_on_a_batch_norm_and_dropout_model(tmp_path, mnist):
    from twinnet.backend import load_model
    from twinnet.numpy_nn.losses import softmax_cross_entropy
    from twinnet.tracing import trace
    from twinnet.weights import save_weights

    rng = np.random.default_rng(0)
    params = models.init_params("cnn-bn-dropout", 1)
    for key, value in params.items():  # moving statistics far from a single image's own
        if key.endswith("moving_mean"):
            params[key] = rng.normal(0.3, 0.2, value.shape).astype(np.float32)
        elif key.endswith("moving_variance"):
            params[key] = rng.uniform(0.2, 2.0, value.shape).astype(np.float32)
        elif key.endswith(("gamma", "beta")):
            params[key] = (value + rng.normal(0, 0.3, value.shape)).astype(np.float32)
    weights = tmp_path / "bn.npz"
    save_weights(weights, "cnn-bn-dropout", params, {})
    model = load_model("cnn-bn-dropout", "numpy", weights=str(weights))
    for index in (0, 7):
        x, y = mnist.test.x[index:index + 1], mnist.test.y[index:index + 1]
        logits = model.logits(x).astype(np.float64)
        inferred = softmax_cross_entropy(logits, y)[0]
        traced = trace(weights, index=index, pictures=False)
        assert traced.loss["numpy"] == pytest.approx(inferred, rel=1e-5)
        assert traced.loss["tf"] == pytest.approx(inferred, rel=1e-5)
        assert traced.predicted == {"numpy": int(logits.argmax()), "tf": int(logits.argmax())}
        assert max(row["max_gradient_diff"] for row in traced.rows) < 1e-8  # frozen batch norm's backward
        assert "Run as the model infers" in traced.markdown()
        training = trace(weights, index=index, pictures=False, training=True)
        assert abs(training.loss["numpy"] - inferred) > 1e-3  # the view the test tells apart


def test_frozen_batch_norm_backward_is_its_affine_maps_gradient():
    from twinnet.numpy_nn.normalization import BatchNorm

    rng = np.random.default_rng(0)
    params = {"bn1/gamma": rng.normal(size=3), "bn1/beta": rng.normal(size=3),
              "bn1/moving_mean": rng.normal(size=3), "bn1/moving_variance": rng.uniform(0.5, 2, 3)}
    layer = BatchNorm("bn1", params)
    layer.frozen = True
    x, d = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    before = params["bn1/moving_mean"].copy()
    out = layer.forward(x, train=True)
    np.testing.assert_array_equal(params["bn1/moving_mean"], before)
    np.testing.assert_allclose(out, BatchNorm("bn1", params).forward(x, train=False))
    dx = layer.backward(d)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[i] += eps
        numeric[i] = ((layer.forward(shifted) - out) * d).sum() / eps
    np.testing.assert_allclose(dx, numeric, rtol=1e-4, atol=1e-6)


# -- Ctrl-C within seconds ------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in map(int, fh.read().split()):
                    found += [child, *descendants(child)]
        except OSError:
            pass
    return found


def is_worker(pid: int, kind: bytes = b"spawn_main") -> bool:
    """Whether pid is a worker: by default a report's job worker (multiprocessing's spawn),
    with kind=FAST_WORKER one of the fast path's."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return kind in fh.read()
    except OSError:
        return False


FAST_WORKER = b"twinnet.numpy_nn.fast.workers import serve"


def test_ctrl_c_ends_train_within_seconds_when_a_worker_is_stopped(tmp_path, mnist_path):
    process = subprocess.Popen([sys.executable, "-m", "twinnet", "train", "cnn", "--steps", "100000",
                                "--data-dir", str(mnist_path), "--out", str(tmp_path / "run")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not stopped and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            stopped = [pid for pid in descendants(process.pid) if is_worker(pid, FAST_WORKER)]
        if not stopped:
            pytest.skip("the fast path started no worker process here (one core?)")
        time.sleep(1.5)  # training
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if process.poll() is None:
            process.kill()
            process.wait()
    err = process.stderr.read()
    assert seconds < 10, seconds
    assert process.returncode == 130 and "Traceback" not in err
    assert "did not end within 3 s of Ctrl-C" in err


def ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT now (/proc's SigIgn mask, bit 2 - 1)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            masks = dict(line.split(":", 1) for line in fh if line.startswith("SigIgn"))
    except OSError:
        return False
    return bool(int(masks.get("SigIgn", "0"), 16) & 1 << (signal.SIGINT - 1))


def test_ctrl_c_ends_report_within_seconds_while_its_workers_start(tmp_path, mnist_path, presets_file):
    """Ctrl-C while a pool worker ignores it (after its initializer, before a training's
    handler: loading its data): the driver used to wait for the job to finish, a minute."""
    presets_file.write_text(presets_file.read_text().replace("steps = 50", "steps = 20000")
                            .replace('{tf = "P1:a", numpy = "P2:b"}', '{numpy = "P2:b"}')
                            + presets_file.read_text().replace("linear", "mlp128")
                            .replace("steps = 50", "steps = 20000")
                            .replace('{tf = "P1:a", numpy = "P2:b"}', '{numpy = "P2:c"}'))
    process = subprocess.Popen([sys.executable, "-m", "twinnet", "report", "--presets", str(presets_file),
                                "--out", str(tmp_path / "report"), "--jobs", "2",
                                "--data-dir", str(mnist_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    family: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not family and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            workers = [pid for pid in descendants(process.pid) if is_worker(pid)]
            if len(workers) == 2 and all(map(ignores_sigint, workers)):  # both loading their data
                family = workers
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: workers starting up
        process.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seconds < 10, seconds
    assert process.returncode == 130 and "Traceback" not in process.stderr.read()
