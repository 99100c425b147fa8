"""``twinnet evaluate``: a weights file's test accuracy, loss and confusion matrix."""

from __future__ import annotations

import argparse
import json

from twinnet.backend import load_model
from twinnet.commands.arguments import (
    add_backend,
    add_data_dir,
    add_layers,
    add_reference,
    add_weights,
    check_reference,
    deprecated,
    layers_lesson,
    weights_file,
)
from twinnet.data import load_mnist
from twinnet.errors import UsageError
from twinnet.exercise.learner import describe_lesson, learner_errors
from twinnet.metrics import evaluate
from twinnet.weights import load_weights


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("evaluate", help="test accuracy, loss and confusion matrix of a "
                                             "weights file",
                            description="Evaluate a weights file on the 10,000 test images.")
    add_weights(parser)
    # The weights file as a positional argument, as before --weights; deprecated.
    parser.add_argument("old_weights", nargs="?", default=None, help=argparse.SUPPRESS)
    add_backend(parser)
    add_reference(parser)
    add_layers(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_dir(parser)
    return parser


def format_confusion(confusion: list[list[int]]) -> str:
    """The 10x10 matrix as aligned text; rows = true digit, columns = predicted digit."""
    lines = ["true\\pred " + " ".join(f"{d:>5}" for d in range(10))]
    for digit, row in enumerate(confusion):
        lines.append(f"{digit:>9} " + " ".join(f"{c:>5}" for c in row))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.old_weights is not None:
        if args.weights is not None:
            raise UsageError(f"give the weights file once, as --weights FILE (got {args.old_weights} "
                             f"and --weights {args.weights})")
        deprecated("twinnet evaluate FILE", "twinnet evaluate --weights FILE")
        args.weights = args.old_weights
    check_reference(args)
    lesson = layers_lesson(args)
    path = weights_file(args.weights)
    _, meta = load_weights(path)
    # The model first: its memory check (backend.load_model) comes before the data's 220 MB.
    with learner_errors(args.layers, lesson):
        model = load_model(meta["model"], args.backend, weights=str(path), reference=args.reference,
                           lesson=lesson)
        test = load_mnist(args.data_dir).test
        result = evaluate(model, test.x, test.y)
    if args.json:
        print(json.dumps({"weights": str(path), "model": meta["model"],
                          "backend": args.backend, **result}, indent=2))
        return 0
    print(f"{path}: {meta['model']} evaluated by the {args.backend} twin on "
          f"{result['count']} test images")
    print(f"test accuracy {result['accuracy']:.2%} ({result['correct']}/{result['count']})  "
          f"cross-entropy {result['loss']:.4f}")
    print(format_confusion(result["confusion_matrix"]))
    if lesson:
        print(f"evaluated with {describe_lesson(args.layers, lesson, meta['model'])}")
    return 0
