"""User-facing errors: the CLI prints their one-line message (no traceback) and exits non-zero."""


class MinilmError(Exception):
    """A mistake in the user's input; the message names the problem and the fix."""


class ConfigError(MinilmError):
    pass


class DataError(MinilmError):
    pass


class CheckpointError(MinilmError):
    pass


class UsageError(MinilmError):
    """A command-line argument that means nothing (or does not apply) for this command or run."""


class Stopped(MinilmError):
    """Training stopped on a signal (Ctrl-C, SIGTERM) after saving a checkpoint; `code` is the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class TrainingError(MinilmError):
    """Training cannot go on (e.g. the loss keeps diverging); the last good checkpoint is kept."""
