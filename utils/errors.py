"""Errors a user can fix: printed as one line (no traceback) and exit code 2."""


class UserError(Exception):
    """Bad input: an unknown name, a missing or malformed file, an impossible option combination."""

    exit_code = 2


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
