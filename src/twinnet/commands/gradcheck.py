"""``twinnet gradcheck``: the NumPy twin's gradients against finite differences."""

from __future__ import annotations

import argparse

from twinnet.commands.arguments import MODEL_CHOICES, add_layers, add_reference, layers_lesson, model_argument
from twinnet.exercise.learner import describe_lesson, learner_errors
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
    add_layers(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    names = NAMED_MODELS if args.model == "all" else (args.model,)
    lesson = layers_lesson(args)
    # The lesson's layers alone; a learner's are graded alone by `twinnet exercise check`.
    rows = check_layers(seed=args.seed) if args.model == "all" and not lesson else []
    with learner_errors(args.layers, lesson):
        for name in names:
            rows += check_model(name, seed=args.seed, fast=not args.reference, lesson=lesson)
    print(format_table(rows))
    if lesson:
        print(f"checked with {describe_lesson(args.layers, lesson, names[0])}" if len(names) == 1 else
              f"checked with your layers from {args.layers}")
        print(f"each layer alone: twinnet exercise check {args.layers}")
    failed = [row for row in rows if not row.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
