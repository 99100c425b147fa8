"""``twinnet sweep``: short runs at several learning rates, ranked on validation."""

from __future__ import annotations

import argparse

from twinnet.commands.arguments import add_engine_arguments, add_train_arguments, config_from_args
from twinnet.config import MAX_SEED
from twinnet.errors import TwinnetError
from twinnet.sweep import DEFAULT_LRS, SWEEP_STEPS, format_sweep, run_sweep, write_sweep


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "sweep", help="short runs at several learning rates, ranked by validation accuracy",
        description="Train short runs at each learning rate on the training split, in parallel "
                    "worker processes, and rank them by validation accuracy (the test split is "
                    "not evaluated). Writes a JSON file and a plot into --out; every finished "
                    "point is saved at once and reused by a rerun with the same settings.")
    add_train_arguments(parser, sweep=True)
    parser.set_defaults(steps=SWEEP_STEPS)
    lrs_defaults = ", ".join(f"{' '.join(f'{lr:g}' for lr in lrs)} for {name}"
                             for name, lrs in DEFAULT_LRS.items())
    parser.add_argument("--lrs", type=float, nargs="+", metavar="LR",
                        help=f"learning rates to try (default: {lrs_defaults})")
    parser.add_argument("--workers", type=int, default=2,
                        help="parallel worker processes, sharing the cores (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="train every rate with seeds SEED .. SEED+K-1 and rank the rates by "
                             "mean validation accuracy (default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", default="sweeps",
                        help="folder for MODEL-BACKEND-OPTIMIZER.json and .png, and the finished "
                             "points (.points/), which a rerun reuses (default: %(default)s)")
    add_engine_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise TwinnetError(f"--workers must be at least 1, got {args.workers}")
    if args.seeds < 1:
        raise TwinnetError(f"--seeds must be at least 1, got {args.seeds}")
    lrs = args.lrs or list(DEFAULT_LRS[args.optimizer])
    if any(not lr > 0 for lr in lrs):
        raise TwinnetError(f"--lrs must all be positive, got {lrs}")
    args.lr = lrs[0]  # the sweep's base configuration records its first rate
    base = config_from_args(args)
    if base.seed + args.seeds - 1 > MAX_SEED:
        raise TwinnetError(f"--seed {base.seed} with --seeds {args.seeds} goes past the largest seed "
                           f"{MAX_SEED}")
    result = run_sweep(base, lrs, workers=args.workers, data_dir=args.data_dir, seeds=args.seeds,
                       out_dir=args.out, engine=args.engine, address=args.address)
    path = write_sweep(result, args.out)
    print(format_sweep(result))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
