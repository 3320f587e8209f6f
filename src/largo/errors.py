"""User-facing errors: each prints as one line naming the key, file or value and what is valid."""


class LargoError(Exception):
    """Base class for errors the CLI reports in one line (exit code 2), without a traceback."""

    exit_code = 2


class ConfigError(LargoError):
    """A config file or override is malformed, unknown, mistyped, out of range or inconsistent."""


class DataError(LargoError):
    """Input data is missing, empty, corrupt or does not match its manifest."""


class CheckpointError(LargoError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model."""


class RunDirError(LargoError):
    """The run directory holds another run or cannot be written."""


class DivergedError(LargoError):
    """Training hit too many consecutive non-finite steps; the last good checkpoint is kept."""

    exit_code = 3


class MissingDependencyError(LargoError):
    """An optional package a command needs is not installed; the message names the pip command that adds it."""
