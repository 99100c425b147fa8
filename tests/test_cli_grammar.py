"""One grammar for every command (commands.arguments.GRAMMAR): the default backend, how a
weights file is given, the default dtype, what happens without a model, the old
spellings, and the install line for a missing extra."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinnet import environment
from twinnet.cli import build_parser, main
from twinnet.weights import DEFAULT_WEIGHTS

REPO = Path(__file__).resolve().parents[1]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings}


def test_every_command_follows_the_grammar():
    seen = {"--backend": [], "--weights": [], "--dtype": []}
    for name, parser in subparsers().items():
        flags = options(parser)
        if "--backend" in flags:
            assert flags["--backend"].default == "numpy", name
            seen["--backend"].append(name)
        if "--weights" in flags:
            assert flags["--weights"].metavar == "FILE" and not flags["--weights"].required, name
            seen["--weights"].append(name)
        if "--dtype" in flags:
            assert flags["--dtype"].default == "float64" and "float32" in flags["--dtype"].choices, name
            seen["--dtype"].append(name)
        assert all(a.metavar == "MODEL" for a in parser._actions if a.dest == "model"), name
    assert sorted(seen["--backend"]) == ["evaluate", "predict", "sweep", "train"]
    assert sorted(seen["--weights"]) == ["compare", "evaluate", "predict", "serve", "trace"]
    assert sorted(seen["--dtype"]) == ["compare", "trace"]


def test_the_rule_is_in_the_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "One grammar for every command" in out and "default numpy" in out and "default float64" in out


@pytest.mark.parametrize("argv, usage, message", [
    (["train"], "usage: twinnet train [options] MODEL", "twinnet train: error: name a MODEL to train"),
    (["compare"], "usage: twinnet compare [options] MODEL", "twinnet compare: error: name a MODEL"),
    (["trace"], "usage: twinnet trace [options] IMAGE", "twinnet trace: error: give either --index I"),
])
def test_without_a_model_the_usage_line_then_one_error(argv, usage, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0] == usage and lines[-1].startswith(message) and captured.out == ""


def test_evaluate_file_still_works_with_one_deprecation_line(capsys, mnist_path):
    weights = str(DEFAULT_WEIGHTS)
    assert main(["evaluate", "--weights", weights, "--json", "--data-dir", str(mnist_path)]) == 0
    new = capsys.readouterr()
    assert main(["evaluate", weights, "--json", "--data-dir", str(mnist_path)]) == 0
    old = capsys.readouterr()
    assert json.loads(old.out) == json.loads(new.out) and new.err == ""
    assert old.err.strip().splitlines() == [
        "twinnet: warning: 'twinnet evaluate FILE' is deprecated; use 'twinnet evaluate --weights FILE'"]
    assert json.loads(new.out)["backend"] == "numpy"
    assert main(["evaluate", weights, "--weights", weights]) == 2
    assert "give the weights file once" in capsys.readouterr().err


def test_predict_uses_the_report_weights_by_default(tmp_path, mnist, capsys):
    image = tmp_path / "seven.png"
    Image.fromarray((mnist.test.x[0, ..., 0] * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["digit"] == mnist.test.y[0]


class Distribution:
    def __init__(self, direct_url: dict | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.mark.parametrize("direct_url, command", [
    ({"url": "file:///home/me/twinnet", "dir_info": {"editable": True}},
     "pip install -e '/home/me/twinnet[tf]'"),
    ({"url": "file:///tmp/dist/twinnet-0.1.0-py3-none-any.whl", "archive_info": {}},
     "pip install '/tmp/dist/twinnet-0.1.0-py3-none-any.whl[tf]'"),
    ({"url": "file:///home/me/twinnet", "dir_info": {}}, "pip install '/home/me/twinnet[tf]'"),
    ({"url": "https://github.com/someone/twinnet", "vcs_info": {"vcs": "git"}}, "pip install 'twinnet[tf]'"),
    (None, "pip install 'twinnet[tf]'"),  # from an index: no direct_url.json
])
def test_the_install_line_fits_how_twinnet_was_installed(monkeypatch, direct_url, command):
    monkeypatch.setattr(environment.importlib.metadata, "distribution", lambda name: Distribution(direct_url))
    assert environment.install_command("tf") == command


def test_without_an_installed_distribution_the_index_line(monkeypatch):
    def missing(name):
        raise environment.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(environment.importlib.metadata, "distribution", missing)
    assert environment.install_command("serve") == "pip install 'twinnet[serve]'"
