"""``twinnet serve``: a local page where you draw a digit and both twins predict it live.

Routes (all on one host, loopback by default):

- ``GET /`` the page; ``GET /static/...`` its script and style sheet, shipped in
  ``twinnet/static``. Nothing comes from anywhere else, so the page works offline; the
  Content-Security-Policy header (``default-src 'self'``) holds the browser to that.
- ``GET /api/status`` which weights each twin uses and whether it is ready:
  ``{"twins": {"numpy": {"model", "weights", "status"}, "tf": {...}}}``, status being
  ``"ready"``, ``"loading"`` or ``"unavailable: <reason>"``.
- ``POST /api/predict`` an image (PNG from the page; anything Pillow reads), as the raw
  request body or as the multipart field ``image``. Answers ``{"input": 28 rows of 28
  floats in [0, 1] (the image the models see, 1 = ink), "twins": {"numpy": {"model",
  "digit", "probabilities": [10 floats]}, "tf": {...} when ready}, "tf_status",
  "agree": bool or null, "max_difference": max |p_numpy - p_tf| or null, "ms": time
  spent on the image}``. A bad upload gets a 4xx and ``{"error": "<one line>"}``.

The upload is prepared by ``twinnet.predict.prepare_grayscale``, the very function
``twinnet predict`` runs on a file, so the page shows exactly what a file would give.

Why Starlette + uvicorn and not gradio: the issue asks for a page that works offline,
shows both twins side by side on the very input they see, and is tested in a real
browser. Gradio's Sketchpad would bring a large dependency tree, a front end that loads
fonts and scripts from CDNs, and its own image preprocessing between the canvas and our
``prepare_grayscale``. A small ASGI app and one hand-written page (about 300 lines of
HTML/JS/CSS, no build step) give full control of the preparation, the layout and the
element ids the browser test reads, for three small wheels (``pip install twinnet[serve]``).

Threads: every image is decoded, prepared and run through both twins in one worker
thread, so TensorFlow never runs two requests at once and memory stays bounded; at most
MAX_PENDING uploads wait for it, more get 503. TensorFlow is imported in the background
after the port is bound (importing it takes seconds), so the page is up at once with the
NumPy twin and the TensorFlow twin joins when ready; without TensorFlow installed the page
runs with the NumPy twin alone and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.util
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from twinnet.errors import TwinnetError
from twinnet.predict import ImageError, prepare_grayscale, softmax, to_grayscale
from twinnet.weights import PRETRAINED_CNN, load_weights, one_line

if TYPE_CHECKING:
    from twinnet.backend import Backend

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_WEIGHTS = PRETRAINED_CNN  # the report's cnn, shipped in the package
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # the image itself
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around it
MAX_DRAIN_BYTES = 16 * 1024 * 1024  # an oversized body is read this far before the 413
MAX_SIDE = 4096  # px, either side
MAX_PIXELS = 4_000_000  # width * height; a 2000x2000 scan still passes
MAX_PENDING = 64  # uploads waiting for the worker before more get 503
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
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
                raise UploadError(422, f"image is {width}x{height} px; at most {MAX_SIDE} px a side "
                                       f"and {MAX_PIXELS:,} pixels")
            image.load()
            return to_grayscale(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise UploadError(415, "not an image Pillow can read (send a PNG)") from None
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
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twinnet-predict")
        self.pending = 0  # touched only from the event loop's thread

    def start_tf(self, on_done=None) -> None:
        """Build the TensorFlow twin in a daemon thread; ``on_done(status, seconds)`` after."""
        if not installed("tensorflow"):
            self.tf_status = "unavailable: TensorFlow is not installed (pip install 'twinnet[tf]')"
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
        return {"twins": {name: {"model": self.models[name], "weights": str(self.weights[name]),
                                 "status": statuses[name]} for name in self.weights}}

    def predict(self, data: bytes) -> dict[str, Any]:
        """Decode, prepare and predict one upload (runs in the worker thread)."""
        start = time.perf_counter()
        x = prepare_upload(data)[np.newaxis]
        tf = self.tf  # read once: the loader thread may publish it meanwhile
        models = {"numpy": self.numpy, **({"tf": tf} if tf is not None else {})}
        probabilities = {name: softmax(model.logits(x))[0] for name, model in models.items()}
        digits = {name: int(np.argmax(p)) for name, p in probabilities.items()}
        both = tf is not None
        return {
            "input": np.round(x[0, ..., 0].astype(np.float64), 4).tolist(),
            "twins": {name: {"model": self.models[name], "digit": digits[name],
                             "probabilities": p.tolist()} for name, p in probabilities.items()},
            "tf_status": "ready" if both else self.tf_status,
            "agree": digits["numpy"] == digits["tf"] if both else None,
            "max_difference": float(np.max(np.abs(probabilities["numpy"] - probabilities["tf"])))
            if both else None,
            "ms": round((time.perf_counter() - start) * 1000, 2),
        }


async def read_upload(request) -> bytes:
    """The image bytes of a POST: the raw body, or the multipart field ``image`` (else the
    first file). Refuses more than MAX_UPLOAD_BYTES with 413, keeping at most that much."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = MAX_UPLOAD_BYTES + (MULTIPART_SLACK if multipart else 0)
    too_big = UploadError(413, f"upload over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DRAIN_BYTES:
        raise too_big
    # Past the limit the rest is read and dropped (up to MAX_DRAIN_BYTES), so that a client
    # still sending its body gets to read the 413 instead of a reset connection.
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
        elif size > MAX_DRAIN_BYTES:
            break
    if size > limit:
        raise too_big
    if not multipart:
        return bytes(body)

    async def once():
        yield bytes(body)

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

    async def predict(request):
        if twins.pending >= MAX_PENDING:
            return JSONResponse({"error": "server busy; try again"}, status_code=503)
        twins.pending += 1
        try:
            data = await read_upload(request)
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
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TwinnetError(f"port {port} on {host} is already in use; stop what uses it or "
                               f"pick another with --port") from None
        raise TwinnetError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def shorter(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it, for messages and the page."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def resolve_weights(args: argparse.Namespace) -> tuple[Path, Path]:
    """(NumPy twin's, TF twin's) weights files from --weights / --weights-numpy / --weights-tf."""
    shared = Path(args.weights) if args.weights else None
    if shared is None and not (args.weights_numpy and args.weights_tf) and not DEFAULT_WEIGHTS.is_file():
        raise TwinnetError(f"the default weights {DEFAULT_WEIGHTS} are missing from this install of "
                           f"twinnet; reinstall it, or pass --weights FILE")
    default = shared or shorter(DEFAULT_WEIGHTS)
    return (Path(args.weights_numpy) if args.weights_numpy else default,
            Path(args.weights_tf) if args.weights_tf else default)


def cmd_serve(args: argparse.Namespace) -> int:
    missing = missing_dependency()
    if missing:
        raise TwinnetError(f"twinnet serve needs the serve extra (missing {missing}): "
                           f"pip install 'twinnet[serve]'")
    import uvicorn

    if not 0 <= args.port <= 65535:
        raise TwinnetError(f"--port must be in 0..65535, got {args.port}")
    numpy_weights, tf_weights = resolve_weights(args)
    twins = Twins(numpy_weights, tf_weights)  # a missing or hostile file stops here, before binding
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"twinnet serve: http://{shown}:{port}/  ({twins.models['numpy']} weights "
          f"{numpy_weights}{'' if tf_weights == numpy_weights else f', TF twin {tf_weights}'}); "
          f"Ctrl-C stops it", flush=True)
    if host not in ("127.0.0.1", "::1"):
        print(f"twinnet serve: listening on {host}, so other machines may reach the page", flush=True)

    def announce(status: str, seconds: float) -> None:
        text = f"ready ({seconds:.1f} s)" if status == "ready" else status
        print(f"twinnet serve: TensorFlow twin {text}", flush=True)

    twins.start_tf(announce)
    config = uvicorn.Config(create_app(twins), log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        twins.worker.shutdown(wait=False, cancel_futures=True)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``twinnet serve`` on the CLI's subparsers."""
    serve = sub.add_parser(
        "serve", help="a local web page: draw a digit, both twins predict it live",
        description="Start a local web server with a page where you draw a digit and both twins "
                    "predict it as you draw, on the 28x28 image `twinnet predict` would make of it. "
                    "Also answers POST /api/predict with an image (JSON). Needs twinnet[serve].")
    serve.add_argument("--weights", metavar="FILE", default=None,
                       help="weights for both twins (a file trained by either twin loads into both; "
                            "default: the report's cnn, shipped with twinnet as "
                            "twinnet/pretrained/cnn.npz)")
    serve.add_argument("--weights-numpy", metavar="FILE", default=None,
                       help="weights for the NumPy twin only (default: --weights)")
    serve.add_argument("--weights-tf", metavar="FILE", default=None,
                       help="weights for the TensorFlow twin only (default: --weights)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help="address to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help="port (default: %(default)s; 0 picks a free one)")
    serve.set_defaults(func=cmd_serve)
    return serve


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return False


def missing_dependency() -> str | None:
    """The name of the first [serve] package that is not installed, or None."""
    return next((name for name in ("starlette", "uvicorn", "multipart") if not installed(name)), None)

