"""One exception type for every user-facing failure.

The CLI turns a VaekitError into a one-line message and a non-zero exit (its `details`, such as
the mirrors a download tried, follow on more lines with --verbose); anything else is a bug and
keeps its traceback.
"""


class VaekitError(Exception):
    """A problem the user can fix: bad data, options, or checkpoint. The message says how, in one line."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class DataError(VaekitError):
    """Missing, corrupt or unsuitable data."""


class ConfigError(VaekitError):
    """An impossible or unknown option value."""


class CheckpointError(VaekitError):
    """A run directory or checkpoint that is missing, broken or not vaekit's."""


def in_one_line(e: BaseException, limit: int = 120) -> str:
    """An exception as 'Type: the first line of its message' (at most `limit` characters of it), for a note."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text.strip() else type(e).__name__
