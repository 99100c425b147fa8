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
    ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 7\n', "must give 10 outputs"),
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
    assert "invalid choice: 'lenet' (choose from linear, mlp128, mlp256x2, cnn, or a .toml spec file)" in (
        capsys.readouterr().err)
