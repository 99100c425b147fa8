"""``twinnet report``: train what is missing of the report's runs and write REPORT.md."""

from __future__ import annotations

import argparse

from twinnet.commands.arguments import add_data_dir, add_engine_arguments
from twinnet.errors import TwinnetError
from twinnet.report import generate_report


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "report", help="run the preset runs and the assignment report's reruns, write the results report",
        description="Train the preset runs (both twins of the four models and of the examples "
                    "lenet5 and cnn-bn-dropout) with --seeds "
                    "seeds each, and the eight runs at the assignment report's own settings (one seed "
                    "each); finished runs whose configuration is unchanged are reused. Then write "
                    "DIR/REPORT.md with curves, confusion matrices, the error-rate table, the "
                    "assignment report's verdicts and the twins' differences beside it. It prints "
                    "its plan at once and a line per finished run; in a terminal also a status "
                    "line, redrawn every second: the runs in training and their steps, and an "
                    "estimate of the time left. Into a file or a pipe, only the finished runs' lines.")
    parser.add_argument("--out", metavar="DIR", default="report",
                        help="report folder; runs go to DIR/runs (default: %(default)s)")
    parser.add_argument("--only", metavar="RUNS", default=None,
                        help="comma-separated run ids (P1a, A-P1a), labels (P1:a, "
                             "'P1:a (assignment settings)') or model names to train again even if "
                             "finished; the report still shows every finished run")
    parser.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="train each preset run with seeds seed..seed+K-1 and show mean, "
                             "spread and the twins' paired difference with a 95%% interval; the "
                             "assignment report's reruns keep one seed (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs trained at once in worker processes (default: %(default)s)")
    parser.add_argument("--presets", metavar="FILE", default=None,
                        help="presets TOML file: exactly the runs to train (default: the one "
                             "shipped in twinnet/presets.toml, plus the assignment report's eight "
                             "runs at its own settings)")
    parser.add_argument("--tensorboard", metavar="DIR", default=None,
                        help="also write every run's curves as TensorBoard scalars under DIR")
    parser.add_argument("--quiet", action="store_true", default=None,
                        help="print only one line per finished run (and the report's path): no "
                             "plan and no status line, as when stdout is not a terminal")
    add_engine_arguments(parser)
    add_data_dir(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise TwinnetError(f"--jobs must be at least 1, got {args.jobs}")
    path = generate_report(out=args.out, only=args.only, jobs=args.jobs, data_dir=args.data_dir,
                           tensorboard=args.tensorboard, presets_path=args.presets, seeds=args.seeds,
                           engine=args.engine, address=args.address, quiet=args.quiet)
    print(f"wrote {path}")
    return 0
