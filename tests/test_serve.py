"""`twinnet serve`: start-up errors, the JSON endpoint, bad uploads, load, and the page in a
real headless Chromium that draws ten MNIST test digits as mouse strokes.

All traffic goes to the server this module starts on 127.0.0.1. Figures (start-up time,
latency, the ten digits) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'twinnet[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'twinnet[serve]'")

from twinnet.cli import main  # noqa: E402
from twinnet.serve import MAX_PENDING, MAX_UPLOAD_BYTES, UPLOAD_GRACE_SECONDS  # noqa: E402
from twinnet.weights import DEFAULT_WEIGHTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIGITS_DRAWN = 10


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_png(image: np.ndarray, dark_on_light: bool = False, scale: int = 1) -> bytes:
    """An MNIST image float32 (28, 28, 1) as a PNG, optionally inverted and enlarged."""
    pixels = np.round(image[..., 0] * 255).astype(np.uint8)
    if dark_on_light:
        pixels = 255 - pixels
    return png_bytes(np.kron(pixels, np.ones((scale, scale), np.uint8)))


def post(url: str, data: bytes, content_type: str = "image/png", timeout: float = 60) -> tuple[int, dict]:
    """POST ``data`` to ``url`` (loopback only); returns (status, decoded JSON)."""
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(url: str) -> dict:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (filename, bytes) file fields; returns (body, content type)."""
    boundary = "twinnet-test-boundary"
    parts = []
    for name, (filename, data) in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                     + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# A sitecustomize that hides TensorFlow from the server's process, as if it were not installed.
NO_TENSORFLOW = 'import sys\nsys.modules["tensorflow"] = None  # find_spec raises: not installed\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`twinnet serve --port 0` in a subprocess: yields (base URL, process, timings, status)."""
    yield from serve_in_subprocess(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server_without_tf(tmp_path_factory):
    """The same server in a process where TensorFlow is not installed: the NumPy twin alone."""
    folder = tmp_path_factory.mktemp("serve-no-tf")
    (folder / "sitecustomize.py").write_text(NO_TENSORFLOW)
    yield from serve_in_subprocess(folder, first_on_path=folder)


def serve_in_subprocess(folder: Path, first_on_path: Path | None = None):
    """Start `twinnet serve --port 0` logging into ``folder`` (``first_on_path`` leading
    PYTHONPATH); yield (base URL, process, timings, status) once the TF twin is ready or
    unavailable, and stop the server after."""
    out = folder / "stdout.txt"
    err = out.with_name("stderr.txt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [*map(str, filter(None, [first_on_path])), str(REPO / "src"),
         *filter(None, [os.environ.get("PYTHONPATH")])]))
    start = time.perf_counter()
    with open(out, "w") as fh, open(err, "w") as err_fh:
        process = subprocess.Popen([sys.executable, "-m", "twinnet", "serve", "--port", "0"],
                                   stdout=fh, stderr=err_fh, env=env, cwd=REPO)
    process.stderr_path = err  # what the server logs, for the tests that read it
    try:
        url = None
        while url is None:
            assert process.poll() is None, f"twinnet serve exited: {out.read_text()}"
            assert time.perf_counter() - start < 60, "twinnet serve printed no address in 60 s"
            words = out.read_text().split()
            url = next((w for w in words if w.startswith("http://127.0.0.1:")), None)
            time.sleep(0.05)
        printed = time.perf_counter() - start
        while True:
            try:
                status = get_json(url + "api/status")
                break
            except OSError:
                time.sleep(0.05)
        answering = time.perf_counter() - start
        while status["twins"]["tf"]["status"] == "loading":
            assert time.perf_counter() - start < 180, "the TensorFlow twin did not load in 180 s"
            time.sleep(0.2)
            status = get_json(url + "api/status")
        timings = {"address printed": printed, "answering": answering,
                   "both twins ready": time.perf_counter() - start}
        yield url, process, timings, status
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def need_tf(status: dict) -> None:
    if status["twins"]["tf"]["status"] != "ready":
        pytest.skip(f"TensorFlow twin {status['twins']['tf']['status']}")


# --- start-up ---------------------------------------------------------------------------------


def test_startup_time_and_status(server):
    url, process, timings, status = server
    print("\nstart-up of twinnet serve: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    for twin in ("numpy", "tf"):
        assert status["twins"][twin]["model"] == "cnn"
        assert (REPO / status["twins"][twin]["weights"]).resolve() == DEFAULT_WEIGHTS
    assert status["twins"]["numpy"]["status"] == "ready"
    assert timings["answering"] < 30  # the figure that matters is printed; this only catches a hang


def test_page_and_assets_are_served_from_the_package(server):
    url = server[0]
    with urllib.request.urlopen(url, timeout=10) as response:
        html = response.read().decode()
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
    for asset in ("app.js", "style.css"):
        with urllib.request.urlopen(f"{url}static/{asset}", timeout=10) as response:
            text = response.read()
        assert b"http://" not in text and b"https://" not in text


def test_missing_or_hostile_weights_stop_before_binding(tmp_path, capsys):
    hostile = tmp_path / "hostile.npz"
    hostile.write_bytes(b"PK\x03\x04 not really a zip")
    with socket.socket() as busy:  # the weights error must come first, before the port is tried
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for args in (["--weights", str(tmp_path / "missing.npz")], ["--weights", str(hostile)],
                     ["--weights-tf", str(hostile)]):
            assert main(["serve", "--port", port, *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("twinnet: error: ") and err.count("\n") == 1, err
            assert ("missing.npz" in err) or ("hostile.npz" in err), err


def test_busy_port_is_one_clear_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"twinnet: error: port {port} on 127.0.0.1 is already in use; stop what uses it or " \
                  f"pick another with --port\n"


# --- the JSON endpoint --------------------------------------------------------------------------


def test_endpoint_reads_test_digits_like_twinnet_predict(server, mnist, tmp_path):
    from twinnet import load_model
    from twinnet.predict import prepare_image, softmax

    url, _, _, status = server
    model = load_model("cnn", "numpy", weights=str(DEFAULT_WEIGHTS))
    for index, (dark, scale) in enumerate([(False, 1), (True, 4), (False, 3), (True, 1), (False, 2)]):
        data = digit_png(mnist.test.x[index], dark_on_light=dark, scale=scale)
        code, answer = post(url + "api/predict", data)
        assert code == 200, answer
        assert answer["twins"]["numpy"]["digit"] == mnist.test.y[index]
        # The answer first (what curl prints at the top), the 784 input values last.
        assert list(answer) == ["twins", "agree", "max_difference", "tf_status", "ms", "input"]
        assert list(answer["twins"]["numpy"]) == ["digit", "probabilities", "model"]
        # The very preparation and probabilities `twinnet predict` gives for the same file.
        path = tmp_path / f"digit{index}.png"
        path.write_bytes(data)
        x = prepare_image(path)
        np.testing.assert_allclose(answer["input"], x[..., 0], atol=5e-5)
        np.testing.assert_allclose(answer["twins"]["numpy"]["probabilities"],
                                   softmax(model.logits(x[np.newaxis]))[0], rtol=1e-12, atol=1e-15)
        if status["twins"]["tf"]["status"] == "ready":
            assert answer["agree"] is True and answer["max_difference"] <= 1e-4
    body, content_type = multipart({"image": ("seven.png", digit_png(mnist.test.x[0]))})
    code, answer = post(url + "api/predict", body, content_type)
    assert code == 200 and answer["twins"]["numpy"]["digit"] == mnist.test.y[0]


def test_bad_uploads_get_4xx_and_one_line(server):
    url = server[0]
    huge_sides = png_bytes(np.zeros((8, 5000), np.uint8))  # a few hundred bytes declaring 5000 px
    too_many_pixels = png_bytes(np.zeros((2100, 2100), np.uint8))
    digit = png_bytes(np.pad(np.full((10, 4), 255, np.uint8), 9))
    cases = [
        ("empty body", b"", "image/png", 400),
        ("text", b"this is not an image\n" * 10, "image/png", 415),
        ("over 2 MB", os.urandom(MAX_UPLOAD_BYTES + 1), "image/png", 413),
        ("5000 px wide", huge_sides, "image/png", 422),
        ("4.4 megapixels", too_many_pixels, "image/png", 422),
        ("blank", png_bytes(np.full((50, 50), 255, np.uint8)), "image/png", 422),
        ("truncated PNG", digit[: len(digit) // 2], "image/png", None),
        ("multipart without a file",
         b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
         "multipart/form-data; boundary=b", 400),
        ("multipart over 2 MB", *multipart({"image": ("big.png", os.urandom(MAX_UPLOAD_BYTES + 10))}), 413),
    ]
    for name, data, content_type, expected in cases:
        code, answer = post(url + "api/predict", data, content_type)
        assert (code == expected) if expected else (400 <= code < 500), (name, code, answer)
        assert set(answer) == {"error"} and "\n" not in answer["error"] and answer["error"], (name, answer)
    code, _ = post(url + "api/predict", digit)  # still serving
    assert code == 200


def test_fifty_concurrent_requests_all_answered_and_latency(server, mnist):
    url, process, _, _ = server
    # 280x280 dark-on-light PNGs, the size and polarity of the page's drawings.
    images = [digit_png(mnist.test.x[i], dark_on_light=True, scale=10) for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:  # exactly 50 requests, all to 127.0.0.1
        start = time.perf_counter()
        answers = list(pool.map(lambda data: post(url + "api/predict", data), images))
        burst = time.perf_counter() - start
    assert [code for code, _ in answers] == [200] * 50
    digits = [answer["twins"]["numpy"]["digit"] for _, answer in answers]
    correct = int(np.sum(np.array(digits) == mnist.test.y[:50]))
    assert correct >= 45
    assert process.poll() is None and get_json(url + "api/status")["twins"]["numpy"]["status"] == "ready"

    round_trips, compute = [], []
    for data in images[:30]:
        start = time.perf_counter()
        code, answer = post(url + "api/predict", data)
        round_trips.append(1000 * (time.perf_counter() - start))
        compute.append(answer["ms"])
    print(f"\n50 concurrent requests answered in {burst:.2f} s; per image, one at a time: "
          f"round trip median {np.median(round_trips):.1f} ms (max {max(round_trips):.1f}), "
          f"server time median {np.median(compute):.1f} ms (max {max(compute):.1f})")


def raw_upload_start(url: str, declared: int, sent: bytes) -> socket.socket:
    """A connection to the server that has sent a POST's header declaring ``declared``
    body bytes and then only ``sent`` (loopback only)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    assert host == "127.0.0.1"
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return conn


def test_slow_uploads_do_not_lock_others_out_and_are_cut(server, mnist):
    # Before: 64 connections sending a byte now and then took every pending slot, and every
    # other request got 503 for as long as they stayed open.
    url, process, _, _ = server
    slow = [raw_upload_start(url, 1000, b"\x89") for _ in range(MAX_PENDING + 8)]
    try:
        time.sleep(0.5)  # all of them are being read now
        code, answer = post(url + "api/predict", digit_png(mnist.test.x[0]))
        assert code == 200 and answer["twins"]["numpy"]["digit"] == mnist.test.y[0]
        # Each slow upload is cut after the grace period, with 408 and one line.
        for conn in slow:
            conn.settimeout(UPLOAD_GRACE_SECONDS + 20)
            answer = b""
            while b"upload too slow" not in answer and (chunk := conn.recv(65536)):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"upload too slow" in answer, answer[:300]
    finally:
        for conn in slow:
            conn.close()
    assert post(url + "api/predict", digit_png(mnist.test.x[1]))[0] == 200


def test_a_client_leaving_mid_upload_is_one_log_line(server):
    # Before: a 40-line ClientDisconnect traceback for every such client.
    url, process, _, _ = server
    log = process.stderr_path
    before = log.read_text()
    conn = raw_upload_start(url, 100_000, b"\x89PNG\r\n\x1a\n" + bytes(1000))
    time.sleep(0.2)
    conn.close()
    deadline = time.monotonic() + 30
    while log.read_text() == before:
        assert time.monotonic() < deadline, "nothing logged in 30 s"
        time.sleep(0.05)
    time.sleep(0.5)  # anything else it would print
    new = log.read_text()[len(before):].splitlines()
    assert len(new) == 1 and "went away during its upload" in new[0], new
    assert "Traceback" not in log.read_text()
    assert process.poll() is None


def image_bytes(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_only_the_listed_formats_are_decoded(server, mnist):
    # Before: any format Pillow knows was decoded, EPS included (which runs Ghostscript).
    url = server[0]
    pixels = np.round(mnist.test.x[0, ..., 0] * 255).astype(np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        options = {"quality": 95} if fmt == "JPEG" else {}
        code, answer = post(url + "api/predict", image_bytes(pixels, fmt, **options))
        assert code == 200 and answer["twins"]["numpy"]["digit"] == mnist.test.y[0], (fmt, code, answer)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n%%EndComments\n"
           b"0 0 moveto 28 28 lineto stroke\nshowpage\n%%EOF\n")
    for name, data in (("EPS", eps), ("PCX", image_bytes(pixels, "PCX")), ("ICO", image_bytes(pixels, "ICO")),
                       ("PPM", image_bytes(pixels, "PPM"))):
        code, answer = post(url + "api/predict", data)
        assert code == 415, (name, code, answer)
        assert answer["error"].startswith("not a PNG, JPEG, GIF, BMP, WebP or TIFF image"), (name, answer)


CLIENTS = 200


def test_two_hundred_concurrent_clients_are_all_answered(server, mnist):
    # Before: 72 answers of 200 and 128 of 503. Now every client is answered, and the
    # latencies are printed (scripts/serve_load.py measures them on their own).
    url, process, _, _ = server
    images = [digit_png(mnist.test.x[i], dark_on_light=True, scale=10) for i in range(CLIENTS)]

    def timed(data: bytes) -> tuple[int, float, int]:
        start = time.perf_counter()
        code, answer = post(url + "api/predict", data)
        return code, time.perf_counter() - start, answer.get("twins", {}).get("numpy", {}).get("digit", -1)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:  # exactly 200 requests, all to 127.0.0.1
        results = list(pool.map(timed, images))
    codes = [code for code, _, _ in results]
    assert codes == [200] * CLIENTS, {code: codes.count(code) for code in set(codes)}
    correct = sum(digit == y for (_, _, digit), y in zip(results, mnist.test.y[:CLIENTS], strict=True))
    assert correct >= 0.9 * CLIENTS
    seconds = np.array([t for _, t, _ in results])
    print(f"\n{CLIENTS} concurrent clients: p50 {np.percentile(seconds, 50) * 1000:.0f} ms, "
          f"p99 {np.percentile(seconds, 99) * 1000:.0f} ms, max {seconds.max() * 1000:.0f} ms")


# --- the page in a real browser -----------------------------------------------------------------


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean (H, W) image to one-pixel-wide strokes."""
    img = np.pad(mask.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            p2, p3, p4, p5 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:]
            p6, p7, p8, p9 = img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            neighbours = sum(p.astype(int) for p in ring[:-1])
            transitions = sum(((a == 0) & (b == 1)).astype(int) for a, b in zip(ring, ring[1:], strict=False))
            if step == 0:
                side = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                side = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (c == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & side
            if remove.any():
                c[remove] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)


def strokes_of(image: np.ndarray) -> list[list[tuple[int, int]]]:
    """Pen strokes tracing a digit image float32 (28, 28, 1): lists of (row, col) pixels along
    the skeleton of its ink, each stroke following unused 8-neighbour links as far as it can,
    starting from stroke ends."""
    skeleton = thin(image[..., 0] > 0.5)
    pixels = {tuple(p) for p in np.argwhere(skeleton)}
    links = {p: [(p[0] + dr, p[1] + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                 if (dr or dc) and (p[0] + dr, p[1] + dc) in pixels] for p in pixels}
    unused = {frozenset((p, q)) for p, qs in links.items() for q in qs}
    strokes, drawn = [], set()
    while unused:
        ends = [p for p in sorted(pixels) if sum(frozenset((p, q)) in unused for q in links[p]) == 1]
        current = ends[0] if ends else min(p for link in unused for p in link)
        stroke = [current]
        while True:
            free = [q for q in links[current] if frozenset((current, q)) in unused]
            if not free:
                break
            # Straight steps before diagonal ones, so a stroke follows the line, not its corners.
            nxt = min(free, key=lambda q: abs(q[0] - current[0]) + abs(q[1] - current[1]))
            unused.discard(frozenset((current, nxt)))
            stroke.append(nxt)
            current = nxt
        strokes.append(stroke)
        drawn.update(stroke)
    strokes += [[p] for p in sorted(pixels - drawn)]  # lone pixels become dots
    return strokes


def test_strokes_cover_the_skeleton():
    image = np.zeros((28, 28, 1), np.float32)
    image[5:23, 12:15] = 1.0  # a thick vertical bar, a "1"
    image[5:8, 8:14] = 1.0
    strokes = strokes_of(image)
    covered = {p for stroke in strokes for p in stroke}
    assert covered == {tuple(p) for p in np.argwhere(thin(image[..., 0] > 0.5))}
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1
               for s in strokes for a, b in zip(s, s[1:], strict=False))
    assert thin(image[..., 0] > 0.5)[:, 13].sum() >= 14  # the bar thins to a line, not to nothing


def read_twin(page, twin: str) -> tuple[int, list[float]]:
    """The digit and the ten probabilities the page shows for ``twin``."""
    digit = page.get_attribute(f"#guess-{twin}", "data-digit")
    bars = page.eval_on_selector_all(f"#bars-{twin} li", "items => items.map(li => li.dataset.p)")
    return int(digit), [float(p) for p in bars]


# The page at a desktop's size and at a phone's (CSS px; the phone as a 390x844 iPhone).
SCREENS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True,
              "has_touch": True},
}
IDLE_HINT = "Draw a digit and both twins will read it."


def draw(page, image: np.ndarray, state: str = "window.twinnetPage", answered: str = "true") -> None:
    """Clear the pad and draw the MNIST image float32 (28, 28, 1) as mouse strokes, then wait
    for the page to show the answer to the last stroke: its ``state`` object (the draw page's,
    or the watch page's) has answered every stroke, and the JS condition ``answered`` on it
    holds."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 28
    page.click("#clear")
    for stroke in strokes_of(image):
        points = [(box["x"] + (c + 0.5) * scale, box["y"] + (r + 0.5) * scale) for r, c in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)
        page.mouse.up()
    page.wait_for_function(f"() => (s => s.drawn > 0 && s.answered === s.drawn && !s.inFlight && {answered})"
                           f"({state})", timeout=30_000)


def outside_viewport(page, selectors: list[str]) -> list[str]:
    """The selectors whose element is not wholly inside the viewport as it is (no scrolling)."""
    size = page.viewport_size
    outside = []
    for selector in selectors:
        box = page.locator(selector).bounding_box()
        if not (box and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size["width"]
                and box["y"] + box["height"] <= size["height"]):
            outside.append(f"{selector} at {box}")
    return outside


def header_cut(page) -> list[str]:
    """The header's visible elements that stick out of the screen or are cut (text that
    overflows its box, e.g. shortened with an ellipsis)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('header > *'))
        .filter(e => e.offsetParent !== null)
        .filter(e => e.getBoundingClientRect().right > window.innerWidth || e.scrollWidth > e.clientWidth)
        .map(e => e.id || e.tagName)""")


def right_edges(page, selectors: list[str]) -> list[float]:
    return [round(page.locator(s).bounding_box()["x"] + page.locator(s).bounding_box()["width"], 1)
            for s in selectors]


@pytest.mark.parametrize("screen", SCREENS)
def test_browser_draws_test_digits_both_twins_read_them(server, browser, mnist, tmp_path, screen):
    url, _, _, status = server
    need_tf(status)
    page = browser.new_page(**SCREENS[screen])
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    page.wait_for_function("() => window.twinnetPage && window.twinnetPage.tf === 'ready'", timeout=30_000)
    count = DIGITS_DRAWN if screen == "desktop" else 4

    rows, differences, server_ms = [], [], []
    for index in range(count):
        draw(page, mnist.test.x[index])
        numpy_digit, numpy_p = read_twin(page, "numpy")
        tf_digit, tf_p = read_twin(page, "tf")
        difference = float(np.max(np.abs(np.subtract(numpy_p, tf_p))))
        differences.append(difference)
        server_ms.append(page.evaluate("() => window.twinnetPage.last.ms"))
        rows.append((int(mnist.test.y[index]), numpy_digit, tf_digit, max(numpy_p), difference))
        agree = "true" if numpy_digit == tf_digit else "false"
        assert page.get_attribute("#verdict", "data-agree") == agree
        seen = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                             ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0)")
        assert np.count_nonzero(seen) > 30  # the 28x28 input is shown

    # The header fits (the phone once cut it: "loaded i…"); the pad, both twins' top guesses
    # and the verdict, together on the screen without scrolling.
    assert not header_cut(page) and page.text_content("#weights") == "cnn weights cnn.npz, in both twins"
    assert page.evaluate("() => window.scrollY") == 0
    assert not outside_viewport(page, ["#pad", "#clear", "#guess-numpy", "#guess-tf", "#verdict"])
    # The cards use the width they have: the twins' cards end where the pad's card does (phone)
    # or where the row ends (desktop), and no card sticks out of the page.
    last_column = [".draw", "#twin-tf"] if screen == "phone" else ["main", "#twin-tf"]
    assert len(set(right_edges(page, last_column))) == 1, right_edges(page, last_column)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= SCREENS[screen]["viewport"]["width"]

    screenshot = tmp_path / f"serve-{screen}.png"
    page.locator("body").screenshot(path=str(screenshot))  # the page's content, no empty margin below
    if os.environ.get("TWINNET_SERVE_SCREENSHOT"):  # a path for the desktop's; the phone's gets -phone
        target = Path(os.environ["TWINNET_SERVE_SCREENSHOT"])
        shutil.copy(screenshot, target if screen == "desktop" else target.with_stem(target.stem + "-phone"))
    page.close()

    print(f"\n{screen}: digit drawn -> NumPy twin, TF twin (top probability, max |p_numpy - p_tf|)")
    for label, by_numpy, by_tf, top, difference in rows:
        print(f"  {label} -> {by_numpy}, {by_tf}  ({top:.4f}, {difference:.1e})")
    numpy_correct = sum(label == by_numpy for label, by_numpy, *_ in rows)
    tf_correct = sum(label == by_tf for label, _, by_tf, *_ in rows)
    print(f"NumPy twin {numpy_correct}/{count}, TF twin {tf_correct}/{count}, "
          f"max probability difference {max(differences):.2e}; server time per 280x280 drawing "
          f"median {np.median(server_ms):.1f} ms (max {max(server_ms):.1f}); screenshot {screenshot}")
    assert numpy_correct >= count - 1 and tf_correct >= count - 1
    assert max(differences) <= 1e-4
    assert screenshot.stat().st_size > 10_000
    assert requested and all(u.startswith(url) for u in requested), requested  # loopback only


@pytest.mark.parametrize("screen", SCREENS)
def test_browser_errors_replace_the_hint_under_the_pad(server, browser, mnist, screen):
    url, *_ = server
    page = browser.new_page(**SCREENS[screen])
    page.goto(url)
    page.wait_for_function("() => window.twinnetPage && window.twinnetPage.tf !== 'loading'", timeout=30_000)
    assert page.text_content("#verdict") == IDLE_HINT
    # The server refuses the drawing, then goes away: each error takes the hint's place.
    page.route("**/api/predict", lambda route: route.fulfill(
        status=422, content_type="application/json", body=json.dumps({"error": "no ink found"})))
    draw(page, mnist.test.x[0])
    assert page.text_content("#verdict") == "no ink found"
    page.unroute("**/api/predict")
    page.route("**/api/predict", lambda route: route.abort())
    draw(page, mnist.test.x[1])
    verdict = page.text_content("#verdict")
    assert verdict.startswith("no answer from the server") and IDLE_HINT not in page.text_content("body")
    assert page.get_attribute("#verdict", "class") == "error"
    assert not outside_viewport(page, ["#pad", "#verdict"])
    page.click("#clear")  # a fresh start brings the hint back
    assert page.text_content("#verdict") == IDLE_HINT
    page.close()


def test_without_tensorflow_the_numpy_twin_serves_alone(monkeypatch, mnist):
    import twinnet.serve as serve

    monkeypatch.setattr(serve, "installed", lambda module: module != "tensorflow")
    twins = serve.Twins(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS)
    told = []
    twins.start_tf(lambda status, seconds: told.append(status))
    assert told == [twins.tf_status]
    assert twins.tf_status.startswith("unavailable: TensorFlow is not installed")
    answer = twins.predict(digit_png(mnist.test.x[1]))
    assert set(answer["twins"]) == {"numpy"} and answer["twins"]["numpy"]["digit"] == mnist.test.y[1]
    assert answer["agree"] is None and answer["max_difference"] is None
    assert answer["tf_status"] == twins.tf_status
    twins.worker.shutdown()


@pytest.mark.parametrize("screen", SCREENS)
def test_browser_with_one_twin_shows_its_card_why_and_how_to_add_the_other(server_without_tf, browser, mnist,
                                                                          tmp_path, screen):
    url, _, _, status = server_without_tf
    tf = status["twins"]["tf"]
    assert tf["status"] == f"unavailable: TensorFlow is not installed ({tf['install']})"
    page = browser.new_page(**SCREENS[screen])
    page.goto(url)
    page.wait_for_function("() => window.twinnetPage && window.twinnetPage.tf.startsWith('unavailable')",
                           timeout=30_000)
    # One twin's card; one line says why, and how to add the other; no promise of two twins.
    assert page.is_visible("#twin-numpy") and page.is_hidden("#twin-tf")
    why = "Only the NumPy twin is here: TensorFlow is not installed."
    how = f"To add the TensorFlow twin, run {tf['install']} and restart twinnet serve."
    assert page.text_content("#alone") == f"{why} {how}"
    assert page.text_content("#weights") == "cnn weights cnn.npz, in the NumPy twin"
    assert page.text_content("#verdict") == "Draw a digit and the NumPy twin will read it."
    assert "both twins" not in page.inner_text("body") and "TensorFlow twin</" not in page.inner_text("body")
    draw(page, mnist.test.x[0])
    digit, probabilities = read_twin(page, "numpy")
    assert digit == mnist.test.y[0] and abs(sum(probabilities) - 1) < 1e-4
    assert page.text_content("#verdict") == f"The NumPy twin says {digit}."
    # It all fits: the header uncut, the pad, the twin's guess and the verdict on one screen,
    # and the lone card takes the row the two shared.
    assert not header_cut(page), header_cut(page)
    assert page.evaluate("() => window.scrollY") == 0
    assert not outside_viewport(page, ["#alone", "#pad", "#clear", "#guess-numpy", "#verdict"])
    last_column = [".draw", "#twin-numpy"] if screen == "phone" else ["main", "#twin-numpy"]
    assert len(set(right_edges(page, last_column))) == 1, right_edges(page, last_column)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= SCREENS[screen]["viewport"]["width"]
    screenshot = tmp_path / f"serve-one-twin-{screen}.png"
    page.locator("body").screenshot(path=str(screenshot))
    print(f"\n{screen}, NumPy twin alone: screenshot {screenshot}")
    page.close()
