"""The ``twinnet`` commands, one module each.

Each command module offers ``add_parser(subparsers)``, which registers the command with
its flags and help (the one home of its usage detail), and ``run(args) -> exit code``.
``twinnet.cli`` lists them and dispatches; ``arguments`` holds the flags several share.
"""
