"""One exception type for every user-facing failure.

The CLI turns a VaekitError into a one-line message and a non-zero exit; anything else
is a bug and keeps its traceback.
"""


class VaekitError(Exception):
    """A problem the user can fix: bad data, options, or checkpoint. The message says how."""


class DataError(VaekitError):
    """Missing, corrupt or unsuitable data."""


class ConfigError(VaekitError):
    """An impossible or unknown option value."""


class CheckpointError(VaekitError):
    """A run directory or checkpoint that is missing, broken or not vaekit's."""
