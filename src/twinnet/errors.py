"""The project's own error type: what the CLI turns into one line and exit code 2."""


class TwinnetError(Exception):
    """A user-facing fault: bad input file, bad value, missing data.

    The message is one line that names the file or value and what is wrong; the
    CLI prints it as ``twinnet: error: <message>`` and exits with code 2.
    """


class UsageError(TwinnetError):
    """A command line that does not say what to work on (no model, no image): the CLI prints
    the command's usage line before the message, as argparse does for its own errors."""
