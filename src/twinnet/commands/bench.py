"""``twinnet bench``: time both twins' training steps and inference."""

from __future__ import annotations

import argparse
import importlib.util
import json

from twinnet.backend import BACKENDS, OPTIMIZERS
from twinnet.bench import (
    format_bench,
    format_blocks,
    format_end_to_end,
    run_bench,
    time_blocks,
    time_end_to_end,
)
from twinnet.commands.arguments import MODEL_CHOICES, model_argument
from twinnet.errors import TwinnetError
from twinnet.models import MODEL_NAMES


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "bench", help="time training steps and inference of both twins",
        description="Time training steps (forward, backward, update) and inference of every "
                    "model on every backend in one process, interleaving backends, after "
                    "warm-up, on random data. Prints ms per step, ms per 1,000 inference images, "
                    "FLOPs counted from the spec, GFLOP/s and the NumPy/TensorFlow ratios.")
    parser.add_argument("--models", nargs="+", type=model_argument, default=list(MODEL_NAMES),
                        metavar="MODEL", help=f"models to time ({MODEL_CHOICES}; default: the four)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                        help="backends to time (default: both where TensorFlow is installed, "
                             "else numpy)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per step (default: 100)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed repeats per model and backend; the median is reported "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30,
                        help="training steps per repeat (default: %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                        help="optimizer of the timed steps (default: %(default)s)")
    parser.add_argument("--blocks", action="store_true",
                        help="instead, time each NumPy-twin block's forward and backward on one "
                             "thread (use --batch-size 50 for a thread's share of a 100-image step)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the NumPy twin on its reference layers alone (twin 'ref'), "
                             "and its step against the fast path's")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time what a user waits for: 'twinnet train MODEL --steps 300 "
                             "--seed 2' of each twin in its own process, its train_seconds (steps and "
                             "validation points) and the NumPy/TensorFlow ratio; needs MNIST (a few "
                             "seconds a run)")
    parser.add_argument("--busy-core", action="store_true",
                        help="with --end-to-end: hold one core with a busy loop meanwhile")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="with --end-to-end: MNIST's folder (default: as 'twinnet train' finds it)")
    parser.add_argument("--json", action="store_true", help="print the full results as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.steps < 1 or args.batch_size < 1:
        raise TwinnetError("--repeats, --steps and --batch-size must be at least 1")
    if (args.busy_core or args.data_dir) and not args.end_to_end:
        raise TwinnetError("--busy-core and --data-dir go with --end-to-end")
    if args.blocks:
        for name in args.models:
            result = time_blocks(name, batch_size=args.batch_size, repeats=args.repeats)
            print(json.dumps(result, indent=2) if args.json else format_blocks(result) + "\n")
        return 0
    results = run_bench(args.models, args.backends or installed_backends(), batch_size=args.batch_size,
                        repeats=args.repeats, steps=args.steps, optimizer=args.optimizer,
                        reference=args.reference)
    print(json.dumps(results, indent=2) if args.json else format_bench(results))
    if args.end_to_end:
        end_to_end = time_end_to_end(args.models, args.backends or installed_backends(),
                                     busy_core=args.busy_core, data_dir=args.data_dir)
        print(json.dumps(end_to_end, indent=2) if args.json else "\n" + format_end_to_end(end_to_end))
    return 0


def installed_backends() -> list[str]:
    """Both twins where TensorFlow is installed, else the NumPy twin alone."""
    return list(BACKENDS) if importlib.util.find_spec("tensorflow") else ["numpy"]
