"""The one exception type users see: its message is a single line printed by the CLI."""


class KdpipeError(Exception):
    """Bad input or an unrecoverable condition, explained in one line.

    The CLI prints ``error: <message>`` and exits non-zero instead of showing a traceback;
    library users can catch it to tell their own bugs from bad input.
    """

    exit_code = 2
