"""Progress bars: one line per run in a notebook without ipywidgets, nothing into a pipe."""

from __future__ import annotations

import io
import sys

from twinnet import progress
from twinnet.progress import FinalLine, progress_bar


def test_final_line_writes_one_line_when_closed():
    out = io.StringIO()
    with FinalLine(total=300, desc="mlp128 (numpy)", unit="step", file=out) as bar:
        for _ in range(300):
            bar.update(1)
            bar.set_postfix(loss="0.1234")
        assert out.getvalue() == ""  # nothing while running
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text
    assert text.startswith("mlp128 (numpy): 100%") and "300/300" in text and "loss=0.1234" in text


def test_in_a_notebook_without_ipywidgets_a_run_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)
    bar = progress_bar(10, "linear (tf)", enabled=True)
    assert isinstance(bar, FinalLine)
    with bar:
        bar.update(10)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "IProgress" not in err


def test_not_shown_into_a_pipe_by_default(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, not a notebook
    assert progress_bar(10, "x").disable
