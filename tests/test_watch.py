"""`twinnet watch`: the thinned history, the settings, the lockstep run in-process (alone
and stopped midway, then continued by `train --resume`), start-up errors, the acceptance
run of mlp128 over its JSON API, and the page in a real headless Chromium.

All traffic goes to servers this module starts on 127.0.0.1. Figures are printed; run
with ``-s`` to see them.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'twinnet[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'twinnet[serve]'")

from test_serve import draw as draw_on_pad  # noqa: E402
from test_serve import outside_viewport  # noqa: E402

from twinnet.cli import main  # noqa: E402
from twinnet.config import DEFAULT_LR  # noqa: E402
from twinnet.serve import installed  # noqa: E402
from twinnet.watch import (  # noqa: E402
    LiveRun,
    default_steps,
    first_layer,
    layer_images,
    relative_drift,
    smoothed,
    thin_indices,
    watch_config,
)

REPO = Path(__file__).resolve().parents[1]
SCREENS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True,
              "has_touch": True},
}


def digit_png(image: np.ndarray) -> bytes:
    """An MNIST image float32 (28, 28, 1) as a PNG, 4x enlarged."""
    buffer = io.BytesIO()
    pixels = np.round(image[..., 0] * 255).astype(np.uint8)
    Image.fromarray(np.kron(pixels, np.ones((4, 4), np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


def call(url: str, data: bytes | None = None, method: str = "GET", timeout: float = 60) -> tuple[int, dict]:
    """A request to the server under test (loopback only); (status, decoded JSON)."""
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(what: str, check, seconds: float, every: float = 0.05):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(every)


# --- the pieces -------------------------------------------------------------------------------


def test_thin_indices_are_bounded_keep_the_last_and_stay_put_as_the_run_grows():
    assert thin_indices(0, 10).tolist() == []
    assert thin_indices(7, 10).tolist() == list(range(7))
    for n in (11, 399, 400, 401, 1000, 12_345, 1_000_000):
        indices = thin_indices(n, 400)
        assert len(indices) <= 401 and indices[-1] == n - 1
        assert np.all(np.diff(indices) > 0)
    # While the stride stays the same, the points chosen before are chosen again.
    before, after = thin_indices(1000, 400), thin_indices(1500, 400)
    assert set(before[:-1]) <= set(after)


def test_smoothed_is_the_trailing_mean():
    values = np.arange(10, dtype=np.float32)
    result = smoothed(values, 3)
    assert result[0] == 0 and result[1] == 0.5 and result[9] == (7 + 8 + 9) / 3


def test_relative_drift():
    a = np.array([1.0, -2.0], np.float32)
    assert relative_drift(a, a) == 0.0
    assert relative_drift(a, a + np.float32(0.5)) == 0.25
    assert relative_drift(np.zeros(2), np.zeros(2)) == 0.0
    assert relative_drift(np.zeros(2), np.array([0.0, 3.0])) == 1.0  # zero biases at step 0
    assert math.isfinite(relative_drift(np.zeros(2), np.ones(2)))


def test_settings_default_to_the_report_settings(tmp_path):
    config = watch_config("mlp128")
    assert (config.optimizer, config.lr, config.schedule, config.batch_size) == ("adam", 0.002, "cosine", 100)
    assert config.steps == default_steps("mlp128", 100)
    # About a minute on 2 cores: the bigger the model, the fewer steps.
    assert default_steps("linear", 100) > default_steps("mlp128", 100) > default_steps("cnn", 100) >= 1000
    sgd = watch_config("mlp128", optimizer="sgd", steps=10)
    assert sgd.lr == DEFAULT_LR["sgd"] and sgd.steps == 10  # the preset's rate goes with its optimizer
    assert watch_config("cnn", lr=0.01, seed=3).lr == 0.01
    spec = tmp_path / "tiny.toml"
    spec.write_text('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 10\n')
    own = watch_config(str(spec))
    assert (own.optimizer, own.schedule) == ("sgd", "constant")  # not in the presets


def test_first_layer_images():
    assert first_layer("mlp128") == ("dense1/W", (28, 28))
    assert first_layer("cnn") == ("conv1/W", (3, 3))
    dense = np.arange(784 * 5, dtype=np.float32).reshape(784, 5)
    images = layer_images(dense, (28, 28), 3)
    assert images.shape == (3, 28, 28) and np.array_equal(images[2].ravel(), dense[:, 2])
    conv = np.arange(3 * 3 * 1 * 16, dtype=np.float32).reshape(3, 3, 1, 16)
    filters = layer_images(conv, (3, 3), 32)
    assert filters.shape == (16, 3, 3) and np.array_equal(filters[4], conv[:, :, 0, 4])


# --- the run, in this process ---------------------------------------------------------------------


def run_to_the_end(run: LiveRun, seconds: float = 120) -> None:
    wait_until("the run ends", lambda: run.state == "done", seconds)


def test_without_tensorflow_the_numpy_twin_trains_alone(mnist, tmp_path):
    config = watch_config("linear", steps=60, eval_every=20)
    run = LiveRun(config, mnist, tmp_path / "out", with_tf=False, tf_status="unavailable: no TF here",
                  log=lambda line: None)
    run.start()
    run_to_the_end(run)
    try:
        summary = json.loads(json.dumps(run.summary()))  # all of it JSON
        assert summary["twins"] == ["numpy"] and set(summary["history"]) == {"numpy"}
        assert summary["drift"] == {} and summary["tf_status"] == "unavailable: no TF here"
        assert summary["step"] == 60 and summary["error"] is None
        assert summary["history"]["numpy"]["val_step"] == [20, 40, 60]
        answer = run.submit(lambda: run.live.predict(digit_png(mnist.test.x[0]))).result(timeout=30)
        assert set(answer["twins"]) == {"numpy"} and answer["tf_status"] == "unavailable: no TF here"
        assert (tmp_path / "out" / "numpy" / "metrics.json").is_file()
        assert not (tmp_path / "out" / "tf").exists()
    finally:
        run.finish()


@pytest.mark.slow
def test_stopped_midway_it_saves_a_run_folder_that_train_resume_continues(mnist, tmp_path, capsys):
    out = tmp_path / "out"
    config = watch_config("mlp128", steps=300, eval_every=50)
    run = LiveRun(config, mnist, out, with_tf=False, log=print)
    run.start()
    wait_until("20 steps", lambda: run.step >= 20, 60, 0.005)
    run.pause()
    wait_until("paused", lambda: run.state == "paused", 10)
    held = run.step
    time.sleep(1.0)
    assert run.step == held and run.summary()["state"] == "paused"
    run.step_once()
    wait_until("one step", lambda: run.step == held + 1, 10)
    time.sleep(0.3)
    assert run.step == held + 1 and run.state == "paused"
    run.stop()
    run_to_the_end(run)
    run.finish()
    folder = out / "numpy"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["stopped_at_step"] == held + 1 and metrics["config"]["steps"] == 300
    assert (folder / "checkpoint.npz").is_file() and (folder / "weights.npz").is_file()
    assert "continue a twin with: twinnet train --resume" in capsys.readouterr().out

    assert main(["train", "--resume", str(folder)]) == 0
    resumed = json.loads((folder / "metrics.json").read_text())
    assert resumed["resumed_at_step"] == held + 1 and "stopped_at_step" not in resumed
    assert resumed["curves"]["step"][-1] == 300 and not (folder / "checkpoint.npz").exists()


# --- the command: start-up errors ------------------------------------------------------------------


def test_busy_port_bad_settings_and_unfinished_folders_are_one_line(tmp_path, capsys, mnist_path,
                                                                   monkeypatch):
    monkeypatch.setenv("TWINNET_DATA", str(mnist_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["watch", "linear", "--port", str(port), "--out", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err
        assert err == f"twinnet: error: port {port} on 127.0.0.1 is already in use; stop what uses it or " \
                      f"pick another with --port\n"
    for args, expected in ((["--lr", "-1"], "--lr must be a positive number"),
                           (["--steps", "0"], "--steps must be at least 1"),
                           (["--batch-size", "0"], "--batch-size must be at least 1"),
                           (["--steps", "2000000"], "at most 1,000,000"),
                           (["--port", "70000"], "--port must be in 0..65535")):
        assert main(["watch", "linear", *args, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("twinnet: error: ") and err.count("\n") == 1 and expected in err, err
    (tmp_path / "c" / "numpy").mkdir(parents=True)
    (tmp_path / "c" / "numpy" / "checkpoint.npz").write_bytes(b"unfinished")
    assert main(["watch", "linear", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run" in err and "twinnet train --resume" in err and err.count("\n") == 1


# --- the command, end to end ---------------------------------------------------------------------


def start_watch(args: list[str], log_dir: Path, path: list[str] = ()) -> tuple[str, subprocess.Popen]:
    """`twinnet watch ... --port 0` in a subprocess (with ``path`` first on its PYTHONPATH);
    (base URL, process) once it answers."""
    out, err = log_dir / "stdout.txt", log_dir / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [*path, str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with open(out, "w") as fh, open(err, "w") as err_fh:
        process = subprocess.Popen([sys.executable, "-m", "twinnet", "watch", *args, "--port", "0"],
                                   stdout=fh, stderr=err_fh, env=env, cwd=log_dir)
    process.logs = (out, err)

    def address():
        assert process.poll() is None, f"twinnet watch exited: {out.read_text()} {err.read_text()}"
        return next((w for w in out.read_text().split() if w.startswith("http://127.0.0.1:")), None)
    url = wait_until("the address", address, 120)
    wait_until("the server answers", lambda: _answers(url), 60)
    return url, process


def _answers(url: str) -> bool:
    try:
        call(url + "api/run", timeout=5)
        return True
    except OSError:
        return False


def end(process: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops it; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.mark.slow
@pytest.mark.tf
def test_acceptance_mlp128_400_steps(mnist, tmp_path):
    if not installed("tensorflow"):
        pytest.skip("needs TensorFlow: pip install 'twinnet[tf]'")
    start = time.monotonic()
    url, process = start_watch(["mlp128", "--steps", "400", "--out", str(tmp_path / "out")], tmp_path)
    try:
        wait_until("training", lambda: call(url + "api/run")[1]["step"] >= 100, 180, 0.01)
        code, paused = call(url + "api/run/pause", b"", "POST")
        assert code == 200 and paused["state"] == "paused", paused
        held = paused["step"]
        for _ in range(4):  # held for 2 seconds
            time.sleep(0.5)
            run = call(url + "api/run")[1]
            assert run["step"] == held and run["state"] == "paused", (held, run["step"])
        assert call(url + "api/run/resume", b"", "POST")[0] == 200
        run = wait_until("done", lambda: (r := call(url + "api/run?points=1000")[1])["state"] == "done" and r,
                         240)
        seconds = time.monotonic() - start
        assert run["step"] == 400 and run["error"] is None and seconds < 240
        print(f"\nmlp128, 400 steps: done in {seconds:.1f} s from the command (paused at step {held} "
              f"for 2 s); twins' steps/s " + ", ".join(
                  f"{t} {run['history'][t]['steps_per_second']:.0f}" for t in run["twins"]))
        assert run["twins"] == ["numpy", "tf"]
        for twin in run["twins"]:
            loss = run["history"][twin]["loss"]
            assert len(loss) == 400 and run["history"][twin]["step"] == list(range(1, 401))
            assert np.mean(loss[-50:]) < 0.5 * np.mean(loss[:20]), twin  # it falls
            assert run["history"][twin]["val_accuracy"][-1] > 0.9
        assert set(run["drift"]) == {"dense1/W", "dense1/b", "dense2/W", "dense2/b", "logits"}
        for name, series in run["drift"].items():
            values = [v for _, v in series]
            assert len(series) >= 3 and all(math.isfinite(v) and v >= 0 for v in values), name
            assert series[-1][0] == 400
            print(f"  drift {name}: {len(series)} points, last {values[-1]:.1e}, max {max(values):.1e}")
        answers = [call(url + "api/predict", digit_png(mnist.test.x[i]), "POST")[1] for i in range(5)]
        assert all(a["step"] == 400 and set(a["twins"]) == {"numpy", "tf"} for a in answers), answers[0]
        read = sum(a["twins"]["numpy"]["digit"] == y for a, y in zip(answers, mnist.test.y[:5], strict=True))
        assert read >= 4 and all(a["agree"] for a in answers)
        for twin in ("numpy", "tf"):
            folder = tmp_path / "out" / twin
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["config"]["backend"] == twin and metrics["curves"]["step"][-1] == 400
            assert not (folder / "checkpoint.npz").exists()
    finally:
        code = end(process)
    assert code == 0, process.logs[1].read_text()
    assert "Traceback" not in process.logs[1].read_text()


def test_without_tensorflow_the_command_says_so_and_trains_the_numpy_twin(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(  # as if TensorFlow were not installed
        "import sys\n\n\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n\n\n"
        "sys.meta_path.insert(0, Hide())\n")
    out = tmp_path / "out"
    url, process = start_watch(["linear", "--steps", "100", "--out", str(out)], tmp_path, [str(hide)])
    try:
        run = wait_until("done", lambda: (r := call(url + "api/run")[1])["state"] == "done" and r, 120)
        assert run["twins"] == ["numpy"] and run["step"] == 100 and run["drift"] == {}
        assert run["tf_status"].startswith("unavailable: TensorFlow is not installed")
    finally:
        code = end(process)
    assert code == 0
    assert "TensorFlow is not installed, so the NumPy twin trains alone" in process.logs[0].read_text()
    assert (out / "numpy" / "metrics.json").is_file() and not (out / "tf").exists()


@pytest.mark.slow
def test_ctrl_c_midway_saves_both_run_folders(tmp_path):
    out = tmp_path / "out"
    url, process = start_watch(["linear", "--steps", "200000", "--out", str(out)], tmp_path)
    try:
        wait_until("training", lambda: call(url + "api/run")[1]["step"] >= 50, 180, 0.05)
    finally:
        code = end(process)
    printed = process.logs[0].read_text()
    assert code == 130, process.logs[1].read_text()
    twins = ("numpy", "tf") if installed("tensorflow") else ("numpy",)
    for twin in twins:
        metrics = json.loads((out / twin / "metrics.json").read_text())
        assert metrics["stopped_at_step"] >= 50 and (out / twin / "checkpoint.npz").is_file()
    assert f"continue a twin with: twinnet train --resume {out / 'numpy'}" in printed, printed
    assert "Traceback" not in process.logs[1].read_text()


# --- the page in a real browser -----------------------------------------------------------------


def draw(page, image: np.ndarray) -> None:
    """The draw page's ``draw``, on the watch page: done when its last answer is shown too."""
    draw_on_pad(page, image, state="window.twinnetWatch", answered="!!s.last")


def shown_step(page) -> int:
    return int(page.text_content("#step").replace(",", ""))


@pytest.mark.slow
def test_browser_watches_pauses_steps_draws_and_stops(browser, mnist, tmp_path):
    out = tmp_path / "out"
    url, process = start_watch(["mlp128", "--steps", "30000", "--out", str(out)], tmp_path)
    requested = []
    try:
        desktop = browser.new_page(**SCREENS["desktop"])
        desktop.on("request", lambda request: requested.append(request.url))
        desktop.goto(url)
        desktop.wait_for_function("() => window.twinnetWatch.state === 'running' && "
                                  "window.twinnetWatch.lossPoints > 10", timeout=180_000)
        twins = desktop.evaluate("() => window.twinnetWatch.run.twins")
        # The chart's points grow as the twins train.
        first = desktop.evaluate("() => window.twinnetWatch.lossLastStep")
        desktop.wait_for_function(f"() => window.twinnetWatch.lossLastStep > {first} + 50", timeout=60_000)
        # Let the curves grow for the screenshot, then pause: the counter holds.
        desktop.wait_for_function("() => window.twinnetWatch.step >= 2500", timeout=240_000)
        desktop.click("#pause")
        desktop.wait_for_function("() => window.twinnetWatch.state === 'paused'", timeout=30_000)
        held = shown_step(desktop)
        time.sleep(2.0)
        assert shown_step(desktop) == held and call(url + "api/run")[1]["step"] == held
        desktop.click("#one-step")
        desktop.wait_for_function(f"() => window.twinnetWatch.step === {held + 1}", timeout=30_000)
        assert desktop.evaluate("() => window.twinnetWatch.driftSeries") == (5 if "tf" in twins else 0)
        desktop.wait_for_function(f"() => window.twinnetWatch.weightsStep === {held + 1}", timeout=30_000)

        # The pad answers, with the weights as they are now.
        rows = []
        for index in range(3):
            draw(desktop, mnist.test.x[index])
            answer = desktop.evaluate("() => window.twinnetWatch.last")
            assert answer["step"] == held + 1
            shown = {t: desktop.get_attribute(f"#answer-{t}", "data-digit") for t in twins}
            assert shown == {t: str(answer["twins"][t]["digit"]) for t in twins}
            rows.append((int(mnist.test.y[index]), shown))
        print(f"\ndrawn digit -> the twins' answers at step {held + 1}: {rows}")
        assert sum(str(label) == shown["numpy"] for label, shown in rows) >= 2
        assert not outside_viewport(desktop, ["#pad", "#answer-numpy", "#step", "#pause", "#stop"])
        assert desktop.evaluate("() => document.documentElement.scrollWidth") <= 1280
        screenshots = {"desktop": tmp_path / "watch.png"}
        desktop.screenshot(path=str(screenshots["desktop"]))

        # A second tab, a phone: the same run; the pad's answers in view without scrolling.
        phone = browser.new_page(**SCREENS["phone"])
        phone.on("request", lambda request: requested.append(request.url))
        phone.goto(url)
        phone.wait_for_function(f"() => window.twinnetWatch.step === {held + 1} && "
                                "window.twinnetWatch.state === 'paused' && "
                                "window.twinnetWatch.lossPoints > 10",
                                timeout=30_000)
        draw(phone, mnist.test.x[3])
        assert phone.evaluate("() => window.scrollY") == 0
        assert not outside_viewport(phone, ["#pad", "#clear", *[f"#answer-{t}" for t in twins]])
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
        screenshots["phone"] = tmp_path / "watch-phone.png"
        phone.screenshot(path=str(screenshots["phone"]))
        phone.close()  # closing a tab does not stop the run

        desktop.click("#resume")
        desktop.wait_for_function(f"() => window.twinnetWatch.step > {held + 50}", timeout=60_000)
        assert process.poll() is None
        desktop.click("#stop")
        desktop.wait_for_function("() => window.twinnetWatch.state === 'done'", timeout=120_000)
        run = call(url + "api/run")[1]
        assert run["stopped_at_step"] == run["step"] > held + 50 and run["error"] is None
        for twin in twins:
            assert (out / twin / "checkpoint.npz").is_file() and (out / twin / "metrics.json").is_file()
        assert "Stopped at step" in desktop.text_content("#message")
        desktop.close()
        if os.environ.get("TWINNET_WATCH_SCREENSHOT"):  # a path for the desktop's; the phone's gets -phone
            target = Path(os.environ["TWINNET_WATCH_SCREENSHOT"])
            shutil.copy(screenshots["desktop"], target)
            shutil.copy(screenshots["phone"], target.with_stem(target.stem + "-phone"))
        for path in screenshots.values():
            assert path.stat().st_size > 20_000
    finally:
        code = end(process)
    assert code == 0, process.logs[1].read_text()
    assert requested and all(u.startswith(url) for u in requested), requested  # loopback only
