"""``twinnet trace``: one image through both twins, in pictures (``twinnet.tracing``)."""

from __future__ import annotations

import argparse

from twinnet.commands.arguments import add_data_dir, add_weights, weights_file
from twinnet.comparison import DEFAULT_DTYPE, DTYPES
from twinnet.errors import UsageError
from twinnet.tracing import trace


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "trace", help="one image through both twins, forward and backward, in pictures",
        usage="%(prog)s [options] IMAGE\n       %(prog)s [options] --index I",
        description="Run one image through both twins with the given weights, forward and "
                    "backward, and write into --out a picture per layer (its activations, conv "
                    "maps as a grid of channels, beside the gradient flowing back into it), "
                    "saliency.png (dL/dx of both twins) and trace.md / trace.json (per layer: "
                    "shapes, norms, the twins' largest differences, the derivation's section). "
                    "With --index the loss is taken against the test image's true label; with "
                    "an IMAGE (prepared as `twinnet predict` does) against the NumPy twin's "
                    "predicted digit; with --label D against digit D. Pictures are 1200 px wide; "
                    "gradients are in nats (the loss is a natural log) per unit of the value. "
                    "The model runs as it infers (as predict and evaluate run it): batch norm on "
                    "its moving statistics, dropout off; --training shows a training step instead.")
    parser.add_argument("image", nargs="?", metavar="IMAGE", default=None,
                        help="a digit image file (instead of --index)")
    parser.add_argument("--index", type=int, default=None, metavar="I",
                        help="MNIST test image number I (0..9999)")
    parser.add_argument("--label", type=int, default=None, metavar="D",
                        help="take the loss against digit D (0..9) instead of the true or predicted "
                             "one: where the model is sure, its gradients are all near 0")
    add_weights(parser)
    parser.add_argument("--out", metavar="DIR", default="trace", help="output folder (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE,
                        help="precision of both twins (default: %(default)s; float32 as trained)")
    parser.add_argument("--training", action="store_true",
                        help="run both twins as in a training step instead: batch norm on this one "
                             "image's own statistics, dropout with the masks of step 0 of seed 0")
    add_data_dir(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if (args.index is None) == (args.image is None):
        raise UsageError("give either --index I (an MNIST test image) or an IMAGE file")
    result = trace(weights_file(args.weights), index=args.index, image=args.image, out=args.out,
                   dtype=args.dtype, data_dir=args.data_dir, label=args.label, training=args.training)
    print(result.markdown(), end="")
    print(f"wrote {len(result.files)} files into {args.out} in {result.seconds:.1f} s")
    return 0
