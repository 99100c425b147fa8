"""`twinnet report` shows progress from its first second: the plan at once, then in a
terminal a status line (runs done, time left, each running run's steps) redrawn every
second; into a pipe or with --quiet only one line per finished run."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest

from twinnet.cli import main
from twinnet.progress import (
    BoardJob,
    JobProgressFile,
    JobsBoard,
    duration,
    progress_bar,
    read_job_progress,
    steps_into,
)

PRESETS = """
[models.linear]
optimizer = "sgd"
lr = 0.5
schedule = "constant"
steps = 400
batch_size = 100
seed = 0
lr_chosen_by = "a test"
twins = {numpy = "X:a"}

[models.mlp128]
optimizer = "sgd"
lr = 0.1
schedule = "constant"
steps = 400
batch_size = 100
seed = 0
lr_chosen_by = "a test"
twins = {numpy = "X:b"}
"""


class Terminal(io.StringIO):
    """A stdout that says it is a terminal and notes when each write came."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.lock = threading.Lock()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.times.append(time.monotonic())
            return super().write(text)


def status_lines(text: str) -> list[str]:
    """The status lines drawn (each after a carriage return), blanks left out."""
    return [part.split("\n")[0].strip() for part in text.split("\r") if part.strip().startswith("report:")]


def test_progress_file_round_trip_and_damage(tmp_path):
    path = tmp_path / "job.json"
    steps = JobProgressFile(path, 400)
    assert read_job_progress(path)["step"] == 0
    steps.update(120)
    assert {k: read_job_progress(path)[k] for k in ("step", "steps")} == {"step": 120, "steps": 400}
    path.write_text("{half")
    assert read_job_progress(path) is None
    assert read_job_progress(tmp_path / "missing.json") is None
    JobProgressFile(tmp_path / "no-such-folder" / "job.json", 10).update(5)  # never raises


def test_inside_steps_into_a_progress_bar_writes_its_steps_not_a_line(tmp_path, capsys):
    path = tmp_path / "job.json"
    with steps_into(path):
        with progress_bar(300, "cnn (numpy)", enabled=False) as bar:  # as train makes its bar
            assert read_job_progress(path)["step"] == 0
            bar.update(120)
            time.sleep(1.1)  # at most one write a second
            bar.update(30)
            assert read_job_progress(path)["step"] == 150
            bar.update(150)
    assert {k: read_job_progress(path)[k] for k in ("step", "steps")} == {"step": 300, "steps": 300}
    assert capsys.readouterr() == ("", "")  # nothing drawn
    with progress_bar(10, "x", enabled=False) as bar:  # outside: an ordinary (here hidden) bar
        bar.update(10)
    assert read_job_progress(path)["step"] == 300


def test_board_in_a_terminal_names_running_jobs_and_the_time_left(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the status line is cut to the terminal's width
    jobs = {key: BoardJob(f"{key} model numpy", 100, work, str(tmp_path / f"{key}.json"))
            for key, work in (("A", 3.0), ("B", 1.0), ("C", 1.0))}
    stream = Terminal()
    with JobsBoard(jobs, workers=2, stream=stream, interval=0.02) as board:
        time.sleep(0.1)
        assert "time left: estimating" in board.status()
        a, b = JobProgressFile(jobs["A"].progress_file, 100), JobProgressFile(jobs["B"].progress_file, 100)
        a.update(50)
        b.update(100)
        time.sleep(0.1)
        board.finished("B", "B model (numpy): test accuracy 90.00% in 1 s", 2.0)
        time.sleep(0.1)
    text = stream.getvalue()
    lines = status_lines(text)
    assert lines[0].startswith("report: 0/3 runs done, time left: estimating")
    assert any("training A model numpy 50/100 steps, B model numpy 100/100 steps" in line for line in lines)
    assert "  [1/3] B model (numpy): test accuracy 90.00% in 1 s\n" in text
    left = [line for line in lines if "left (" in line and line.startswith("report: 1/3")]
    assert left and re.search(r"about \d+ s left", left[-1]), lines
    assert text.endswith("\r")  # the status line is wiped at the end


def test_board_estimates_from_work_seen(tmp_path):
    jobs = {"A": BoardJob("A", 10, 2.0, None, seconds=20.0), "B": BoardJob("B", 10, 4.0, None),
            "C": BoardJob("C", 10, 2.0, None)}
    # 2 units took 20 s; 6 units are left on 2 workers: 60 s of work, 30 s of waiting.
    assert JobsBoard(jobs, workers=2, stream=io.StringIO()).seconds_left() == pytest.approx(30.0)
    assert duration(30) == "30 s" and duration(420) == "7 min" and duration(3900) == "1 h 05 min"


def test_board_into_a_pipe_prints_only_finished_runs(tmp_path):
    stream = io.StringIO()  # not a terminal
    jobs = {"A": BoardJob("A", 10, 1.0, str(tmp_path / "a.json"))}
    with JobsBoard(jobs, workers=2, stream=stream, interval=0.01) as board:
        JobProgressFile(jobs["A"].progress_file, 10).update(5)
        time.sleep(0.05)
        board.finished("A", "A done", 1.0)
    assert stream.getvalue() == "  [1/1] A done\n"


@pytest.fixture
def presets(tmp_path) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(PRESETS)
    return path


@pytest.mark.slow
def test_report_in_a_terminal_shows_plan_at_once_and_progress_every_second(tmp_path, presets, mnist_path,
                                                                          monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setenv("COLUMNS", "200")  # the status line is cut to the terminal's width
    started = time.monotonic()
    assert main(["report", "--presets", str(presets), "--out", str(tmp_path / "out"), "--jobs", "2",
                 "--data-dir", str(mnist_path)]) == 0
    text = terminal.getvalue()
    assert text.startswith("training 2 run(s) with 2 job(s) on the local engine; reusing 0 finished\n"
                           "  to train, longest first: X:b, X:a\n")
    assert terminal.times[0] - started < 5  # the plan within 5 s
    times = [t for t in terminal.times if t > terminal.times[0]]
    gaps = [b - a for a, b in zip([terminal.times[0], *times], times, strict=False)]
    assert max(gaps) < 30, gaps  # a line at least every 30 s (here: every second)
    lines = status_lines(text)
    assert any(re.search(r"training X:b mlp128 numpy \d+/400 steps", line) for line in lines), lines
    assert any(re.search(r"(about \d+ s left|finishing) \(", line) for line in lines), lines
    assert re.search(r"  \[1/2\] X:. \w+ \(numpy\): test accuracy [\d.]+% in \d+ s\n", text)
    assert "[2/2]" in text and text.rstrip().endswith("REPORT.md")


@pytest.mark.slow
def test_report_quiet_or_into_a_pipe_is_one_line_per_finished_run(tmp_path, presets, mnist_path, capsys):
    args = ["report", "--presets", str(presets), "--out", str(tmp_path / "out"), "--jobs", "2",
            "--data-dir", str(mnist_path)]
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    finished = r"  \[\d/2\] X:. \w+ \(numpy\): test accuracy .* in \d+ s"
    assert len(out) == 3 and all(re.fullmatch(finished, line) for line in out[:2]), out
    assert out[2].startswith("wrote ") and "\r" not in "".join(out)
    assert main([*args, "--only", "X:a"]) == 0  # not a terminal: the same, without --quiet
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("  [1/1] X:a linear (numpy): test accuracy"), out
    assert out[1].startswith("wrote ") and "\r" not in "".join(out)
