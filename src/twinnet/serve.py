"""``twinnet serve``: a local page where you draw a digit and both twins predict it live.

Routes (all on one host, loopback by default):

- ``GET /`` the page; ``GET /static/...`` its script and style sheet, shipped in
  ``twinnet/static``. Nothing comes from anywhere else, so the page works offline; the
  Content-Security-Policy header (``default-src 'self'``) holds the browser to that.
- ``GET /api/status`` which weights each twin uses and whether it is ready:
  ``{"twins": {"numpy": {"model", "weights", "status"}, "tf": {...}}}``, status being
  ``"ready"``, ``"loading"`` or ``"unavailable: <reason>"``; where TensorFlow is not
  installed, the tf twin also has ``"install"``, the pip line that adds it.
- ``POST /api/predict`` an image (PNG from the page; also JPEG, GIF, BMP, WebP or TIFF:
  UPLOAD_FORMATS), as the raw request body or as the multipart field ``image``. Answers,
  the answer first and the input last, ``{"twins": {"numpy": {"digit", "probabilities":
  [10 floats], "model"}, "tf": {...} when ready}, "agree": bool or null,
  "max_difference": max |p_numpy - p_tf| or null, "tf_status", "ms": time spent on the
  image, "input": 28 rows of 28 floats in [0, 1] (the image the models see, 1 = ink)}``.
  A bad upload gets a 4xx and ``{"error": "<one line>"}``.

The upload is prepared by ``twinnet.predict.prepare_grayscale``, the very function
``twinnet predict`` runs on a file, so the page shows exactly what a file would give.

Why Starlette + uvicorn and not gradio: the issue asks for a page that works offline,
shows both twins side by side on the very input they see, and is tested in a real
browser. Gradio's Sketchpad would bring a large dependency tree, a front end that loads
fonts and scripts from CDNs, and its own image preprocessing between the canvas and our
``prepare_grayscale``. A small ASGI app and one hand-written page (about 300 lines of
HTML/JS/CSS, no build step) give full control of the preparation, the layout and the
element ids the browser test reads, for three small wheels (the serve extra).

Threads: every image is decoded, prepared and run through both twins in one worker
thread, so TensorFlow never runs two requests at once and memory stays bounded. At most
MAX_PENDING uploads, read whole, wait for it; more get 503. An image takes about 3 ms
(decoding and preparing about 1, the NumPy twin 0.1, the TensorFlow twin 1), so a full
queue is answered within a second or two even on 2 busy cores: 200 clients posting at
once are all served. Shedding happens only beyond that bound, or when the uploads being
read hold more than MAX_BUFFERED_BYTES between them.

Slow clients: an upload is read in the event loop and holds no place in the queue while
it arrives, so slow uploads cannot lock others out. It must arrive at MIN_UPLOAD_RATE
(after a grace of UPLOAD_GRACE_SECONDS), else it gets 408, so a connection sending a byte
now and then is dropped within seconds. A client that goes away mid-upload is logged in
one line. Only the formats of UPLOAD_FORMATS are decoded: Pillow's other plugins (EPS
runs Ghostscript, for one) never see an upload. TensorFlow is imported in the background
after the port is bound (importing it takes seconds), so the page is up at once with the
NumPy twin and the TensorFlow twin joins when ready; without TensorFlow installed the page
runs with the NumPy twin alone and says so.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import io
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from twinnet.environment import install_command
from twinnet.errors import TwinnetError
from twinnet.predict import ImageError, prepare_grayscale, softmax, to_grayscale
from twinnet.weights import load_weights, one_line

if TYPE_CHECKING:
    from twinnet.backend import Backend

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # the image itself
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around it
MAX_DRAIN_BYTES = 16 * 1024 * 1024  # an oversized body is read this far before the 413
MAX_SIDE = 4096  # px, either side
MAX_PIXELS = 4_000_000  # width * height; a 2000x2000 scan still passes
MAX_PENDING = 256  # uploads read whole and waiting for the worker before more get 503
MAX_BUFFERED_BYTES = 128 * 1024 * 1024  # all the uploads being read, together
MIN_UPLOAD_RATE = 32 * 1024  # bytes a second an upload must keep up, after the grace
UPLOAD_GRACE_SECONDS = 5.0
# Pillow's names of the formats an upload may be in (the page sends PNG).
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FORMATS_TEXT = "PNG, JPEG, GIF, BMP, WebP or TIFF"
LISTEN_BACKLOG = 1024  # connections the kernel queues before accepting: a burst of clients
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"


class UploadError(Exception):
    """An upload the endpoint refuses: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes) -> np.ndarray:
    """Uploaded bytes -> float64 (H, W) in [0, 1] as ``to_grayscale`` returns it.

    The size is checked from the header before any pixel is decoded, so a small file
    declaring a huge image costs nothing. Raises UploadError (415 not an image, 422
    absurd size or damaged data)."""
    if not data:
        raise UploadError(400, "empty upload: send an image (PNG) as the request body")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as image:
            width, height = image.size
            if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
                raise UploadError(422, f"image is {width}x{height} px; at most {MAX_SIDE} px a side "
                                       f"and {MAX_PIXELS:,} pixels")
            image.load()
            return to_grayscale(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise UploadError(415, f"not a {FORMATS_TEXT} image (send a PNG)") from None
    except Image.DecompressionBombError as exc:
        raise UploadError(422, f"image too large ({one_line(exc)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadError(422, f"cannot read image ({one_line(exc)})") from None


def prepare_upload(data: bytes) -> np.ndarray:
    """Uploaded bytes -> float32 (28, 28, 1), prepared as ``twinnet predict`` prepares a file."""
    gray = decode_image(data)
    try:
        return prepare_grayscale(gray, "upload")
    except ImageError as exc:
        raise UploadError(422, exc.reason) from None


class Twins:
    """The two twins behind the page and the one worker thread that runs them.

    The NumPy twin is built at once; the TensorFlow twin by ``start_tf`` in a
    background thread, published only after a warm-up call."""

    def __init__(self, numpy_weights: Path, tf_weights: Path) -> None:
        from twinnet.backend import load_model

        self.weights = {"numpy": numpy_weights, "tf": tf_weights}
        # load_weights checks each file (raising WeightsError) before anything is built.
        self.models = {name: load_weights(path)[1]["model"] for name, path in self.weights.items()}
        self.numpy: Backend = load_model(self.models["numpy"], "numpy", weights=str(numpy_weights))
        self.tf: Backend | None = None
        self.tf_status = "loading"
        self.tf_install: str | None = None  # the pip line that adds TensorFlow, when it is missing
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twinnet-predict")
        self.pending = 0  # touched only from the event loop's thread

    def start_tf(self, on_done=None) -> None:
        """Build the TensorFlow twin in a daemon thread; ``on_done(status, seconds)`` after."""
        if not installed("tensorflow"):
            self.tf_install = install_command("tf")
            self.tf_status = f"unavailable: TensorFlow is not installed ({self.tf_install})"
            if on_done:
                on_done(self.tf_status, 0.0)
            return

        def build() -> None:
            from twinnet.backend import load_model

            start = time.perf_counter()
            try:
                model = load_model(self.models["tf"], "tf", weights=str(self.weights["tf"]))
                model.logits(np.zeros((1, 28, 28, 1), np.float32))  # trace the graph now, not on a request
            except Exception as exc:  # whatever goes wrong, the NumPy twin goes on serving
                self.tf_status = f"unavailable: {type(exc).__name__}: {one_line(exc)}"
            else:
                self.tf = model
                self.tf_status = "ready"
            if on_done:
                on_done(self.tf_status, time.perf_counter() - start)

        threading.Thread(target=build, name="twinnet-load-tf", daemon=True).start()

    def status(self) -> dict[str, Any]:
        statuses = {"numpy": "ready", "tf": self.tf_status}
        twins = {name: {"model": self.models[name], "weights": str(self.weights[name]),
                        "status": statuses[name]} for name in self.weights}
        if self.tf_install is not None:
            twins["tf"]["install"] = self.tf_install
        return {"twins": twins}

    def predict(self, data: bytes) -> dict[str, Any]:
        """Decode, prepare and predict one upload (runs in the worker thread)."""
        start = time.perf_counter()
        x = prepare_upload(data)[np.newaxis]
        tf = self.tf  # read once: the loader thread may publish it meanwhile
        models = {"numpy": self.numpy, **({"tf": tf} if tf is not None else {})}
        probabilities = {name: softmax(model.logits(x))[0] for name, model in models.items()}
        digits = {name: int(np.argmax(p)) for name, p in probabilities.items()}
        both = tf is not None
        # The answer first and the 784 input values last, so that curl shows the answer at once.
        return {
            "twins": {name: {"digit": digits[name], "probabilities": p.tolist(),
                             "model": self.models[name]} for name, p in probabilities.items()},
            "agree": digits["numpy"] == digits["tf"] if both else None,
            "max_difference": float(np.max(np.abs(probabilities["numpy"] - probabilities["tf"])))
            if both else None,
            "tf_status": "ready" if both else self.tf_status,
            "ms": round((time.perf_counter() - start) * 1000, 2),
            "input": np.round(x[0, ..., 0].astype(np.float64), 4).tolist(),
        }


class Uploads:
    """The bytes held by the uploads being read, together (touched only from the event
    loop's thread)."""

    def __init__(self, budget: int = MAX_BUFFERED_BYTES) -> None:
        self.budget = budget
        self.held = 0


async def receive_body(request, limit: int, uploads: Uploads) -> bytes:
    """The request body, read at MIN_UPLOAD_RATE or faster (after UPLOAD_GRACE_SECONDS):
    408 for a slower one, 413 past ``limit`` (the rest is read and dropped up to
    MAX_DRAIN_BYTES, so that a client still sending gets to read the answer), 503 when
    the uploads being read would hold more than ``uploads.budget`` bytes together.
    Raises starlette's ClientDisconnect if the client goes away."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = request.stream().__aiter__()
    body, size, held = bytearray(), 0, 0
    try:
        while True:
            deadline = started + UPLOAD_GRACE_SECONDS + size / MIN_UPLOAD_RATE
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadError(408, f"upload too slow: {size} bytes in {loop.time() - started:.0f} s; "
                                       f"send at least {MIN_UPLOAD_RATE // 1024} KB/s") from None
            size += len(chunk)
            if size <= limit:
                if uploads.held + len(chunk) > uploads.budget:
                    raise UploadError(503, "server busy; try again")
                uploads.held += len(chunk)
                held += len(chunk)
                body += chunk
            elif size > MAX_DRAIN_BYTES:
                break
    finally:
        uploads.held -= held
    if size > limit:
        raise UploadError(413, f"upload over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    return bytes(body)


async def read_upload(request, uploads: Uploads | None = None) -> bytes:
    """The image bytes of a POST: the raw body, or the multipart field ``image`` (else the
    first file), read by ``receive_body``. Refuses more than MAX_UPLOAD_BYTES with 413."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = MAX_UPLOAD_BYTES + (MULTIPART_SLACK if multipart else 0)
    too_big = UploadError(413, f"upload over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DRAIN_BYTES:
        raise too_big
    body = await receive_body(request, limit, uploads or Uploads())
    if not multipart:
        return body

    async def once():
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=1, max_fields=8,
                             max_part_size=MAX_UPLOAD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadError(400, f"bad multipart upload ({exc.message})") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        image = form.get("image")
        upload = image if isinstance(image, UploadFile) else files[0] if files else None
        if upload is None:
            raise UploadError(400, "multipart upload without a file; send it as the field 'image'")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > MAX_UPLOAD_BYTES:
        raise too_big
    return data


async def upload_or_refusal(request, uploads: Uploads, command: str) -> Any:
    """The image bytes of a POST /api/predict (``read_upload``), or the response refusing
    it: an UploadError's status and message, or 400 for a client that went away during its
    upload (never sent; logged as ``twinnet COMMAND: ...``)."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response

    try:
        return await read_upload(request, uploads)
    except UploadError as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    except ClientDisconnect:
        print(f"twinnet {command}: {client_name(request)} went away during its upload; "
              "nothing to answer", file=sys.stderr, flush=True)
        return Response(status_code=400)


def client_name(request) -> str:
    """``HOST:PORT`` of the request's client, for log lines."""
    client = request.client
    return f"{client.host}:{client.port}" if client else "a client"


def create_app(twins: Twins):
    """The Starlette app serving the page, ``/api/status`` and ``/api/predict``."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def page(request):
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP,
                                                            "Cache-Control": "no-cache"})

    async def status(request):
        return JSONResponse(twins.status())

    uploads = Uploads()

    async def predict(request):
        data = await upload_or_refusal(request, uploads, "serve")
        if not isinstance(data, bytes):
            return data
        if twins.pending >= MAX_PENDING:
            return JSONResponse({"error": "server busy; try again"}, status_code=503)
        twins.pending += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(twins.worker, twins.predict, data)
        except UploadError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        finally:
            twins.pending -= 1
        return JSONResponse(result)

    return Starlette(routes=[
        Route("/", page),
        Route("/api/status", status),
        Route("/api/predict", predict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), handed to uvicorn so that a busy port is
    found here, with a clear message, rather than inside the server."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TwinnetError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TwinnetError(f"port {port} on {host} is already in use; stop what uses it or "
                               f"pick another with --port") from None
        raise TwinnetError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return False


def missing_dependency() -> str | None:
    """The name of the first [serve] package that is not installed, or None."""
    return next((name for name in ("starlette", "uvicorn", "multipart") if not installed(name)), None)


def check_server(command: str, port: int) -> None:
    """TwinnetError, one line, unless ``twinnet COMMAND`` (serve, watch) can serve: the
    serve extra installed and ``port`` in 0..65535."""
    missing = missing_dependency()
    if missing:
        raise TwinnetError(f"twinnet {command} needs the serve extra (missing {missing}): "
                           f"{install_command('serve')}")
    if not 0 <= port <= 65535:
        raise TwinnetError(f"--port must be in 0..65535, got {port}")

