"""``twinnet evaluate``: a weights file's test accuracy, loss and confusion matrix."""

from __future__ import annotations

import argparse
import json

from twinnet.backend import BACKENDS, load_model
from twinnet.commands.arguments import add_data_dir
from twinnet.data import load_mnist
from twinnet.metrics import evaluate
from twinnet.weights import load_weights


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="test accuracy, loss and confusion matrix of a "
                                             "weights file",
                            description="Evaluate a weights file on the 10,000 test images.")
    parser.add_argument("weights", help="a twinnet weights file (.npz)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="twin to evaluate with (default: the one that trained it)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_dir(parser)
    parser.set_defaults(func=run)


def format_confusion(confusion: list[list[int]]) -> str:
    """The 10x10 matrix as aligned text; rows = true digit, columns = predicted digit."""
    lines = ["true\\pred " + " ".join(f"{d:>5}" for d in range(10))]
    for digit, row in enumerate(confusion):
        lines.append(f"{digit:>9} " + " ".join(f"{c:>5}" for c in row))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    _, meta = load_weights(args.weights)
    test = load_mnist(args.data_dir).test
    backend = args.backend or meta.get("backend")
    if backend not in BACKENDS:
        backend = "numpy"
    model = load_model(meta["model"], backend, weights=args.weights)
    result = evaluate(model, test.x, test.y)
    if args.json:
        print(json.dumps({"weights": str(args.weights), "model": meta["model"],
                          "backend": backend, **result}, indent=2))
        return 0
    print(f"{args.weights}: {meta['model']} evaluated by the {backend} twin on "
          f"{result['count']} test images")
    print(f"test accuracy {result['accuracy']:.2%} ({result['correct']}/{result['count']})  "
          f"cross-entropy {result['loss']:.4f}")
    print(format_confusion(result["confusion_matrix"]))
    return 0
