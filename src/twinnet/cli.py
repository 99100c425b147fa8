"""The ``twinnet`` command: the registry of its commands and ``main``.

Each command is one module of ``twinnet.commands`` with ``add_parser(subparsers)`` and
``run(args)``; its help text is the one home of its usage detail. Every user-facing
fault (bad data file, bad weights file, bad value) ends in one line
``twinnet: error: ...`` on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from twinnet.commands import (
    bench,
    compare,
    docs,
    evaluate,
    exercise,
    gradcheck,
    predict,
    report,
    serve,
    sweep,
    trace,
    train,
    watch,
)
from twinnet.commands.arguments import GRAMMAR
from twinnet.errors import TwinnetError, UsageError
from twinnet.memory import MAX_MEMORY_ENV, parse_size
from twinnet.quiet import VERBOSE_ENV
from twinnet.version import __version__

# The messages of NumPy's floating-point RuntimeWarnings (np.errstate's categories).
NUMERIC_WARNINGS = r"(overflow|invalid value|divide by zero|underflow) encountered"
# In the order `twinnet --help` lists them.
COMMANDS = (train, report, evaluate, predict, sweep, bench, gradcheck, compare, trace, serve, watch, exercise,
            docs)
VERBOSE_HELP = (f"show TensorFlow's start-up log lines (absl, oneDNN), hidden by default; "
                f"{VERBOSE_ENV}=1 in the environment does the same")
MAX_MEMORY_HELP = (f"refuse, before any work, a model whose estimated memory for the command is over SIZE "
                   f"(500M, 2G; default: the memory this machine has available); {MAX_MEMORY_ENV}=SIZE "
                   "in the environment does the same")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinnet",
        description="Four MNIST classifiers trained twice: by TensorFlow (the framework twin)\n"
                    "and by hand-derived NumPy backpropagation (the NumPy twin).",
        epilog=GRAMMAR + "Each command's --help has the rest; `twinnet docs usage` prints the guide\n"
                         "to what --help cannot say, and `twinnet docs` lists every doc installed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twinnet {__version__}")
    parser.add_argument("--verbose", action="store_true", default=False, help=VERBOSE_HELP)
    parser.add_argument("--max-memory", metavar="SIZE", default=None, help=MAX_MEMORY_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command_parser = command.add_parser(subparsers)
        command_parser.set_defaults(func=command.run, command_parser=command_parser)
        # Also after the command: twinnet compare cnn --verbose.
        command_parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                                    help=VERBOSE_HELP)
        command_parser.add_argument("--max-memory", metavar="SIZE", default=argparse.SUPPRESS,
                                    help=MAX_MEMORY_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # an environment variable, so that worker processes see it too
        os.environ[VERBOSE_ENV] = "1"
    budget_before = os.environ.get(MAX_MEMORY_ENV)
    try:
        if args.max_memory is not None:  # an environment variable, so that workers see it too
            parse_size(args.max_memory)
            os.environ[MAX_MEMORY_ENV] = args.max_memory
        with warnings.catch_warnings():
            # NumPy's floating-point warnings where no np.errstate expected them: what they
            # mean (a value out of range) ends the command in one line, not a warning line
            # before results computed from inf or NaN.
            warnings.filterwarnings("error", category=RuntimeWarning, message=NUMERIC_WARNINGS)
            return args.func(args)
    except RuntimeWarning as exc:
        print(f"twinnet: error: numerical fault: {exc} (a value beyond the range of floating point: "
              "an extreme spec value or weight)", file=sys.stderr)
        return 2
    except UsageError as exc:  # as argparse reports its own: the usage line, then the fault
        args.command_parser.print_usage(sys.stderr)
        print(f"{args.command_parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TwinnetError as exc:
        code = getattr(exc, "exit_code", 2)
        print(f"twinnet: {'error: ' if code != 130 else ''}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("twinnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (`| head`) stopped early; silence Python's flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:  # for this command only (main may run again in this process: tests, notebooks)
        if budget_before is None:
            os.environ.pop(MAX_MEMORY_ENV, None)
        else:
            os.environ[MAX_MEMORY_ENV] = budget_before


if __name__ == "__main__":
    sys.exit(main())
