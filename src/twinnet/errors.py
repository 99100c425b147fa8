"""The project's own error type: what the CLI turns into one line and exit code 2."""


class TwinnetError(Exception):
    """A user-facing fault: bad input file, bad value, missing data.

    The message is one line that names the file or value and what is wrong; the
    CLI prints it as ``twinnet: error: <message>`` and exits with code 2.
    """
