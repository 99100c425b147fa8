"""``twinnet compare``: both twins on one batch, layer by layer (``twinnet.comparison``)."""

from __future__ import annotations

import argparse
import json

from twinnet.commands.arguments import (
    MODEL_CHOICES,
    add_data_dir,
    add_layers,
    add_reference,
    add_weights,
    layers_lesson,
    model_argument,
)
from twinnet.comparison import DEFAULT_DTYPE, DTYPES, TOLERANCES, compare, format_comparison
from twinnet.errors import UsageError
from twinnet.exercise.learner import describe_lesson, learner_errors


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    tol = "; ".join(f"{d}: activations {t['activation']:.0e}, gradients {t['gradient']:.0e}, "
                    f"loss {t['loss']:.0e}" for d, t in TOLERANCES.items())
    parser = sub.add_parser(
        "compare", help="run both twins on one batch and compare them layer by layer",
        usage="%(prog)s [options] MODEL\n       %(prog)s [options] --weights FILE",
        description="Load both twins with the same weights (--weights, else a seeded "
                    "initialisation), run the same batch (the first N MNIST test images, "
                    "else a seeded random batch) forward and backward, and print per layer "
                    "the output shape, the activation difference max|NumPy-TF|/max(1,max|TF|), "
                    "the relative error of the gradient flowing into the layer and of each "
                    "parameter's gradient (max|NumPy-TF|/max|TF|), then each twin's loss. "
                    f"Tolerances: {tol}. A bias that a batch norm right after its layer cancels "
                    "has gradient 0 in exact arithmetic: it is shown, marked *, and not judged. "
                    "Exit code 1 if any tolerance is exceeded.")
    parser.add_argument("model", nargs="?", type=model_argument, default=None, metavar="MODEL",
                        help=f"which model ({MODEL_CHOICES}; optional with --weights, "
                             "whose meta names it)")
    add_weights(parser, default="seeded initial weights of MODEL")
    parser.add_argument("--batch", type=int, default=64, metavar="N",
                        help="images in the batch (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE,
                        help="precision of both twins (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the initial weights and the random batch (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_reference(parser, "also compare, as the whole network that trains,")
    add_layers(parser)
    add_data_dir(parser, missing="a random batch if the files are absent")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.model is None and args.weights is None:
        raise UsageError("name a MODEL, or give --weights FILE")
    lesson = layers_lesson(args)
    with learner_errors(args.layers, lesson):
        result = compare(args.model, weights=args.weights, batch=args.batch, dtype=args.dtype,
                         seed=args.seed, data_dir=args.data_dir, reference=args.reference, lesson=lesson)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_comparison(result))
    if lesson and not args.json:
        print(f"the NumPy side ran {describe_lesson(args.layers, lesson, result.model)}")
    return 0 if result.passed else 1
