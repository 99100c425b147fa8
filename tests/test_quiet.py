"""TensorFlow's start-up lines (absl, oneDNN) are hidden unless --verbose / TWINNET_VERBOSE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from twinnet.quiet import without_noise

SRC = Path(__file__).resolve().parents[1] / "src"
NOISE = ("absl", "oneDNN", "cpu_feature_guard")


def test_without_noise_drops_only_the_start_up_lines():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1.0  42 port.cc:153] oneDNN custom operations are on. You may see ...\n"
            "E0000 something really went wrong\n"
            "UserWarning: a Python warning\n")
    assert without_noise(text) == "E0000 something really went wrong\nUserWarning: a Python warning\n"


def run_compare(*flags: str, env: dict[str, str] | None = None) -> str:
    environ = {name: value for name, value in os.environ.items() if name != "TWINNET_VERBOSE"}
    environ.update({"PYTHONPATH": str(SRC), **(env or {})})
    done = subprocess.run([sys.executable, "-m", "twinnet", *flags], capture_output=True, text=True,
                          env=environ, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def quiet_output() -> str:
    pytest.importorskip("tensorflow")
    return run_compare("compare", "linear", "--batch", "4")


@pytest.mark.tf
def test_compare_prints_no_tensorflow_start_up_lines(quiet_output):
    assert "layer" in quiet_output  # the comparison itself is printed
    assert not [line for line in quiet_output.splitlines() if any(word in line for word in NOISE)]


@pytest.mark.tf
def test_verbose_shows_what_tensorflow_prints(quiet_output):
    loud = run_compare("compare", "linear", "--batch", "4", "--verbose")
    also_loud = run_compare("compare", "linear", "--batch", "4", env={"TWINNET_VERBOSE": "1"})
    # Whatever this TensorFlow build prints on start-up comes back with --verbose.
    assert len(loud.splitlines()) >= len(quiet_output.splitlines())
    assert len(also_loud.splitlines()) == len(loud.splitlines())


@pytest.mark.parametrize("argv", [["--verbose", "gradcheck"], ["gradcheck", "--verbose"]])
def test_verbose_is_a_global_flag_before_or_after_the_command(argv):
    from twinnet.cli import build_parser

    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["gradcheck"]).verbose is False


def test_help_names_the_environment_variable():
    from twinnet.cli import build_parser

    assert "TWINNET_VERBOSE=1" in build_parser().format_help()
