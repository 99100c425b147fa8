"""``twinnet serve``: the draw-a-digit page (``twinnet.serve``) on a local port."""

from __future__ import annotations

import argparse
from pathlib import Path

from twinnet.commands.arguments import add_server, add_weights, weights_file
from twinnet.serve import (
        FORMATS_TEXT,
    MAX_PENDING,
    MAX_UPLOAD_BYTES,
    MIN_UPLOAD_RATE,
    UPLOAD_GRACE_SECONDS,
    Twins,
    bind,
    check_server,
    create_app,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "serve", help="a local web page: draw a digit, both twins predict it live",
        description="Start a local web server with a page where you draw a digit and both twins "
                    "predict it as you draw, on the 28x28 image `twinnet predict` would make of it. "
                    f"Also answers POST /api/predict with an image ({FORMATS_TEXT}, at most "
                    f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB, sent at {MIN_UPLOAD_RATE // 1024} KB/s "
                    f"or faster after {UPLOAD_GRACE_SECONDS:g} s) with JSON. Up to {MAX_PENDING} "
                    "uploads wait for the models at once; more are answered 503 (busy). Needs "
                    "twinnet[serve].")
    add_weights(parser, what="weights for both twins (a file trained by either twin loads into both)")
    parser.add_argument("--weights-numpy", metavar="FILE", default=None,
                        help="weights for the NumPy twin only (default: --weights)")
    parser.add_argument("--weights-tf", metavar="FILE", default=None,
                        help="weights for the TensorFlow twin only (default: --weights)")
    add_server(parser)
    return parser


def resolve_weights(args: argparse.Namespace) -> tuple[Path, Path]:
    """(NumPy twin's, TF twin's) weights files from --weights / --weights-numpy / --weights-tf."""
    if args.weights_numpy and args.weights_tf and not args.weights:
        return Path(args.weights_numpy), Path(args.weights_tf)
    default = weights_file(args.weights)
    return (Path(args.weights_numpy) if args.weights_numpy else default,
            Path(args.weights_tf) if args.weights_tf else default)


def run(args: argparse.Namespace) -> int:
    check_server("serve", args.port)
    import uvicorn

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

