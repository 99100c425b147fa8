"""``twinnet gradcheck``: the NumPy twin's gradients against finite differences."""

from __future__ import annotations

import argparse

from twinnet.commands.arguments import MODEL_CHOICES, add_reference, model_argument
from twinnet.gradcheck import check_layers, check_model, format_table
from twinnet.models import NAMED_MODELS


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "gradcheck", help="check the NumPy twin's gradients against finite differences",
        description="Compare every analytic gradient of the NumPy twin with central finite "
                    "differences in float64 and print the maximum relative error per parameter.")
    parser.add_argument("model", nargs="?", default="all", metavar="MODEL",
                        type=lambda value: value if value == "all" else model_argument(value),
                        help=f"{MODEL_CHOICES}, or all (every named model and every layer alone; default)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random batch")
    add_reference(parser, "check")
    return parser


def run(args: argparse.Namespace) -> int:
    names = NAMED_MODELS if args.model == "all" else (args.model,)
    rows = check_layers(seed=args.seed) if args.model == "all" else []
    for name in names:
        rows += check_model(name, seed=args.seed, fast=not args.reference)
    print(format_table(rows))
    failed = [row for row in rows if not row.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
