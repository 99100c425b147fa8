"""``twinnet exercise``: derive it yourself. ``start DIR`` writes a workspace (the
lesson's 14 classes and functions with their computing bodies left out, and a README);
``check FILE`` grades a learner's file name by name (``twinnet.exercise``)."""

from __future__ import annotations

import argparse
import json

from twinnet.errors import UsageError
from twinnet.exercise.grader import DEFAULT_TIMEOUT, Result, grade
from twinnet.exercise.names import NAMES
from twinnet.exercise.skeleton import write_workspace


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "exercise", help="derive the layers yourself: a workspace to fill in, and its grader",
        description="Derive backpropagation yourself. 'start DIR' writes DIR/layers.py (the lesson's "
                    "14 classes and functions, each forward, backward, optimizer step and the loss "
                    "left as raise NotImplementedError) and DIR/README.md (the order to work in). "
                    "'check FILE' grades each name the file defines: its forward against the "
                    "lesson's, its backward against finite differences of its own forward, the "
                    "lesson's layer and TensorFlow's autodiff (where installed), its side effects "
                    "and dtypes. Train on your layers with 'twinnet train MODEL --layers FILE'. "
                    "See docs/exercises.md.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="write a workspace to fill in",
                               description="Write DIR/layers.py and DIR/README.md.")
    start.add_argument("directory", metavar="DIR", help="the workspace folder (created if missing)")
    start.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                       help=f"a smaller workspace of these names only ({', '.join(NAMES)})")
    start.add_argument("--force", action="store_true", help="overwrite existing files")
    check = actions.add_parser(
        "check", help="grade a learner's layers.py",
        description="Grade every one of the 14 names FILE defines (a name left out is not graded), "
                    "each in a process of its own with a time limit. Exit code 0 when every graded "
                    "name passes (and one was graded), 1 otherwise, 2 for a missing file, a syntax "
                    "error or a module that fails to import.")
    check.add_argument("file", metavar="FILE", help="the learner's layers.py")
    check.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                       help="grade these names only")
    check.add_argument("--json", action="store_true",
                       help='print {"results": [{"name", "status", "message", "checks"}, ...]}')
    check.add_argument("--seed", type=int, default=0, help="seeds the cases (default: %(default)s)")
    check.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="time limit per name (default: %(default)g)")
    for sub_parser in (start, check):
        sub_parser.set_defaults(command_parser=sub_parser)
        # As cli gives every command: also after the action (twinnet exercise check FILE --verbose).
        sub_parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                                help="show TensorFlow's start-up log lines")
    return parser


def format_results(results: list[Result], tf_status: str) -> str:
    """The table (name, status, checks, message) and the summary line."""
    rows = [(r.name, r.status, ", ".join(r.checks) or "-", r.message) for r in results]
    header = ("name", "status", "checks", "message")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]).rstrip()

    implemented = [r for r in results if r.status != "not_implemented"]
    passed = sum(r.status == "pass" for r in implemented)
    summary = f"{passed} of {len(implemented)} implemented pass"
    if tf_status not in ("ran", "nothing to check"):
        summary += f" (without TensorFlow's checks: TensorFlow {tf_status})"
    return "\n".join([line(header), "  ".join("-" * w for w in widths) + "  -------", *map(line, rows),
                      summary])


def run(args: argparse.Namespace) -> int:
    if args.action == "start":
        written = write_workspace(args.directory, tuple(args.only or NAMES), args.force)
        print(f"wrote {', '.join(map(str, written))}; start with the README")
        return 0
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
    results, tf_status = grade(args.file, tuple(args.only) if args.only else None, args.seed, args.timeout)
    if args.json:
        print(json.dumps({"results": [r.to_json() for r in results], "tensorflow": tf_status}, indent=2))
    else:
        print(format_results(results, tf_status) if results else
              f"{args.file} defines none of the names to grade ({', '.join(args.only or NAMES)})")
    graded = [r for r in results if r.status != "not_implemented"]
    return 0 if graded and all(r.status == "pass" for r in graded) else 1
