"""The one exception type for a user's mistake (exit code 2 on the command line)."""


class FerkitError(Exception):
    """Bad input from the user: a missing file, a malformed row, an unknown layout, ...

    The message is one line that names the file or field and what is wrong.
    """
