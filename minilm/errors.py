"""User-facing errors: the CLI prints their one-line message (no traceback) and exits non-zero."""


class MinilmError(Exception):
    """A mistake in the user's input; the message names the problem and the fix."""


class ConfigError(MinilmError):
    pass


class DataError(MinilmError):
    pass


class CheckpointError(MinilmError):
    pass
