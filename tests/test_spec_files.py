"""A spec file's path works where a model name does on the command line: train, gradcheck,
compare, bench; bad specs and bad names are refused in one line before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinnet import models
from twinnet.cli import main

SMALL = """name = "tiny"
[[layers]]
type = "conv2d"
filters = 2
kernel = 5
stride = 2
padding = "valid"
[[layers]]
type = "tanh"
[[layers]]
type = "flatten"
[[layers]]
type = "dense"
units = 10
"""


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "my_net.toml"
    path.write_text(SMALL)
    return path


def test_train_takes_a_spec_file_and_names_the_run_after_it(spec_file, tmp_path, monkeypatch, mnist_path,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(spec_file), "--steps", "3", "--data-dir", str(mnist_path)]) == 0
    weights = tmp_path / "runs" / "tiny-numpy" / "weights.npz"
    assert weights.is_file()
    with np.load(weights, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
        assert set(archive.files) == {"meta", *models.param_shapes(str(spec_file))}
    assert meta["model"] == "tiny" and meta["spec"]["layers"][0]["kernel"] == 5


def test_gradcheck_takes_a_spec_file(spec_file, capsys):
    assert main(["gradcheck", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "conv1/W" in out and out.rstrip().endswith("4 passed, 0 failed")


@pytest.mark.parametrize(("layers", "expected"), [
    ('[[layers]]\ntype = "conv3d"\n', "layer 1: type must be one of"),
    ('[[layers]]\ntype = "dense"\nunits = 10\nactivation = "relu"\n', "unknown key 'activation'"),
    ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = "ten"\n',
     "layer 2 (dense): units must be an integer"),
    ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 7\n',
     "layer 2 (dense): units: the last layer must give 10 outputs"),
    ('[[layers]]\ntype = "flatten"\n', "layer 1 (flatten): type: the last layer must give 10 outputs"),
    ('layers = 3\n', "a spec is a TOML table with a non-empty array of [[layers]]"),
    ('[[layers]\n', "not valid TOML"),
])
def test_a_bad_spec_is_one_line_naming_file_layer_and_key_before_any_work(tmp_path, capsys, layers, expected):
    path = tmp_path / "bad.toml"
    path.write_text(layers)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"twinnet: error: {path}") and expected in err[0]
    assert not (tmp_path / "run").exists()


def test_a_name_that_is_neither_a_model_nor_a_spec_file_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["gradcheck", "lenet"])
    assert exit_info.value.code == 2
    assert ("invalid choice: 'lenet' (choose from linear, mlp128, mlp256x2, cnn, lenet5, cnn-bn-dropout, "
            "or a .toml spec file)") in capsys.readouterr().err


def test_weights_of_a_spec_model_need_only_the_file(spec_file, tmp_path, monkeypatch, mnist_path, capsys):
    """Trained from a spec file that is then deleted, the weights still evaluate and
    predict: the spec travels in their meta (the model's parameters are larger than the
    built-in models' under the same names, so the file is read under the spec's bounds)."""
    spec_file.write_text(SMALL.replace("filters = 2", "filters = 40"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(spec_file), "--steps", "2", "--data-dir", str(mnist_path)]) == 0
    spec_file.unlink()
    weights = str(tmp_path / "runs" / "tiny-numpy" / "weights.npz")
    capsys.readouterr()
    assert main(["evaluate", "--weights", weights, "--data-dir", str(mnist_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tiny"
    params, meta = __import__("twinnet.weights").weights.load_weights(weights)
    assert meta["model"] == "tiny" and params["conv1/W"].shape == (5, 5, 1, 40)


def weights_with_meta(spec_file, path, edit):
    """A weights file of the spec's model whose meta ``edit(meta)`` has changed."""
    from twinnet.weights import save_weights

    save_weights(path, str(spec_file), models.init_params(str(spec_file)), {})
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["meta"] = np.array(json.dumps(edit(json.loads(str(arrays["meta"])))))
    np.savez(path, **arrays)
    return path


def test_a_carried_spec_that_disagrees_with_the_arrays_is_one_line(spec_file, tmp_path):
    from twinnet.weights import WeightsError, load_weights

    def three_filters(meta: dict) -> dict:
        meta["spec"]["layers"][0]["filters"] = 3  # the arrays hold 2 filters
        return {**meta, "model": "tiny3"}

    path = weights_with_meta(spec_file, tmp_path / "w.npz", three_filters)
    expected = r"w.npz: conv1/W has shape \(5, 5, 1, 2\), expected \(5, 5, 1, 3\)"
    with pytest.raises(WeightsError, match=expected):
        load_weights(path)


def test_a_carried_spec_may_not_take_a_built_in_models_name(spec_file, tmp_path):
    from twinnet.weights import WeightsError, load_weights

    path = weights_with_meta(spec_file, tmp_path / "w.npz", lambda meta: {**meta, "model": "cnn"})
    with pytest.raises(WeightsError, match="its model is named 'cnn', as another model is here"):
        load_weights(path)


BN_ADAM = SMALL.replace('[[layers]]\ntype = "tanh"',
                        '[[layers]]\ntype = "batchnorm"\n[[layers]]\ntype = "tanh"')


def test_a_checkpoint_of_a_larger_spec_model_with_batch_norm_is_read_back(tmp_path):
    """Its parameters are larger than the built-in models' under the same names, and batch
    norm's moving statistics have no Adam slots: read under the spec's own bounds."""
    from twinnet.checkpoint import load_checkpoint
    from twinnet.config import TrainConfig
    from twinnet.training import save_training, start_training

    path = tmp_path / "bn.toml"
    path.write_text(BN_ADAM.replace("filters = 2", "filters = 40"))
    config = TrainConfig(model=str(path), optimizer="adam", steps=10)
    state = start_training(config, 1000)
    rng = np.random.default_rng(0)
    state.model.train_step(rng.random((8, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 8), 1e-3)
    state.step = 3
    save_training(tmp_path / "checkpoint.npz", config, state)
    loaded_config, loaded = load_checkpoint(tmp_path / "checkpoint.npz")
    assert loaded_config == config and loaded["step"] == 3
    assert set(loaded["params"]) == set(models.param_shapes(str(path)))
    assert "bn1/moving_mean/m" not in loaded["optimizer"] and "bn1/gamma/m" in loaded["optimizer"]
    np.testing.assert_array_equal(loaded["params"]["conv1/W"], state.model.params["conv1/W"])
