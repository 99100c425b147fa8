"""Acceptance check for ``twinnet.predict``: do users' images get MNIST's own answers?

Writes the first N MNIST test digits as 200x200 PNGs, once white on black as in
MNIST and once inverted (black on white, like ink on paper), runs
``predict_images`` on the files and prints how often its digit agrees with the
model's prediction on the original 28x28 image, per polarity and overall.
Prints figures; asserts nothing.

    python scripts/check_predict.py --weights runs/cnn-tf/weights.npz --count 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from twinnet.backend import BACKENDS, load_model
from twinnet.data import load_mnist
from twinnet.metrics import predict_logits
from twinnet.predict import predict_images
from twinnet.weights import load_weights

SIZE = 200


def write_digits(images: np.ndarray, folder: Path, invert: bool) -> list[str]:
    """Save images (N, 28, 28, 1) in [0, 1] as SIZE x SIZE 8-bit PNGs; returns the paths."""
    paths = []
    for i, image in enumerate(images):
        pixels = np.rint(image[..., 0] * 255).astype(np.uint8)
        if invert:
            pixels = 255 - pixels
        path = folder / f"{i:05d}-{'black-on-white' if invert else 'white-on-black'}.png"
        Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(path)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="a twinnet weights file (.npz)")
    parser.add_argument("--count", type=int, default=1000, help="test digits to use (default: %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="twin to predict with (default: the one that trained the weights)")
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST files")
    args = parser.parse_args()

    _, meta = load_weights(args.weights)
    backend = args.backend or (meta.get("backend") if meta.get("backend") in BACKENDS else "numpy")
    model = load_model(meta["model"], backend, weights=args.weights)
    test = load_mnist(args.data_dir).test
    x, y = test.x[: args.count], test.y[: args.count]
    reference = predict_logits(model, x).argmax(axis=1)
    print(f"{args.weights}: {meta['model']} on the {backend} twin, first {len(x)} test digits as "
          f"{SIZE}x{SIZE} PNGs; model accuracy on the 28x28 originals {np.mean(reference == y):.2%}")

    agree_all = []
    with tempfile.TemporaryDirectory() as tmp:
        for invert in (False, True):
            paths = write_digits(x, Path(tmp), invert)
            started = time.perf_counter()
            results = predict_images(model, paths)
            seconds = time.perf_counter() - started
            errors = [r for r in results if "error" in r]
            digits = np.array([r.get("digit", -1) for r in results])
            agree = digits == reference
            agree_all.append(agree)
            label = "black on white" if invert else "white on black"
            print(f"  {label:<15} agreement {agree.mean():.2%} ({agree.sum()}/{len(agree)})  "
                  f"accuracy {np.mean(digits == y):.2%}  errors {len(errors)}  "
                  f"({seconds:.1f} s)")
    agree = np.concatenate(agree_all)
    print(f"  {'overall':<15} agreement {agree.mean():.2%} ({agree.sum()}/{len(agree)})")


if __name__ == "__main__":
    main()
