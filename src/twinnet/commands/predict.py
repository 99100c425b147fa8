"""``twinnet predict``: the digit in each of the user's own images."""

from __future__ import annotations

import argparse
import json
import sys

from twinnet.backend import load_model
from twinnet.commands.arguments import add_backend, add_weights, weights_file
from twinnet.predict import format_predictions, predict_images
from twinnet.weights import load_weights


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "predict", help="read digits from your own images",
        description="Predict the digit in each image (PNG, JPEG or anything Pillow reads, any "
                    "size, either polarity). Each image is made grayscale, inverted if dark on "
                    "light, cropped to the digit, scaled to fit 20x20 and centred by centre of "
                    "mass in 28x28, as MNIST was made. Prints the digit and the top-3 "
                    "probabilities; a file that cannot be used is reported and the rest are "
                    "still predicted (exit code 2 if any failed).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_weights(parser)
    add_backend(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    path = weights_file(args.weights)
    _, meta = load_weights(path)
    # The twin is built after the images are decoded, so the two memory peaks do not add up.
    results = predict_images(lambda: load_model(meta["model"], args.backend, weights=str(path)), args.images)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        predicted = [r for r in results if "error" not in r]
        if predicted:
            print(format_predictions(predicted))
        for result in failed:
            print(f"twinnet: error: {result['file']}: {result['error']}", file=sys.stderr)
    return 2 if failed else 0
