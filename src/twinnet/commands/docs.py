"""``twinnet docs``: the user docs that ship with the package, printed (or their paths)."""

from __future__ import annotations

import argparse
import pydoc
import sys

from twinnet.errors import TwinnetError
from twinnet.userdocs import README, doc_files, doc_text, title, topics


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "docs", help="read the user docs that come with twinnet (the guide: twinnet docs usage)",
        description="Print one of the docs installed with twinnet, as Markdown: through a pager "
                    "($PAGER, else less) in a terminal, plainly into a pipe or a file. Without "
                    "TOPIC, list the docs.")
    parser.add_argument("topic", nargs="?", default=None, metavar="TOPIC",
                        help="a doc's name, e.g. usage (the guide to the commands), readme or "
                             "derivations; without it, the list")
    parser.add_argument("--path", action="store_true",
                        help="print the doc's file path instead, to open it in an editor or a "
                             "Markdown viewer")
    return parser


def listing() -> str:
    width = max(len(name) for name in topics())
    lines = ["The docs installed with twinnet (twinnet docs TOPIC prints one):"]
    for name in topics():
        what = "the README: what twinnet is, first steps, results" if name == README else title(name)
        lines.append(f"  {name:<{width}}  {what}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.topic is None:
        print(listing())
        return 0
    text = doc_text(args.topic)  # a TwinnetError naming the topics if there is no such doc
    if args.path:
        if args.topic == README:
            raise TwinnetError("the README has no file in the installed package (it is the "
                               "package's description); print it with: twinnet docs readme")
        print(doc_files()[args.topic.removesuffix(".md")])
    elif sys.stdout.isatty():
        pydoc.pager(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
