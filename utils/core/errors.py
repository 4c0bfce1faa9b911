"""Errors a user can fix: printed as one line (no traceback) and exit code 2."""


class UserError(Exception):
    """Bad input: an unknown name, a missing or malformed file, an impossible option combination."""

    exit_code = 2


class NonFiniteLossError(RuntimeError):
    """The training or validation loss became NaN or infinite; the last good checkpoint, if any, is kept."""

    exit_code = 3


class RunInterrupted(Exception):
    """Ctrl-C: the run ends with one line saying whether and how it can be resumed."""

    exit_code = 130


class FinishedRun(Exception):
    """``--resume`` of a run whose ``results.json`` exists: nothing to do (the script prints this, exit 0)."""

    def __init__(self, path, results):
        super().__init__(f"{path} is finished (results.json exists); nothing was resumed or changed. Start a new run "
                         f"to train again")
        self.results = results
