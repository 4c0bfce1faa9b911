"""The error handling every script shares (``main-*.py``, ``test-*.py``, ``main-MFH.py``, ``indices_gen.py``): bad
input ends with one line on stderr and its exit code, never a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from utils.core.errors import FinishedRun, NonFiniteLossError, RunInterrupted, UserError

T = TypeVar("T")


def exit_on_error(body: Callable[[], T], interrupted: str = "interrupted; nothing was written") -> T:
    """Run ``body()``. A :class:`UserError` (exit code 2) or :class:`NonFiniteLossError` (exit code 3) ends the
    script with one line ``error: ...`` on stderr; ``--resume`` of a finished run prints one line and returns its
    results; Ctrl-C ends with one line (``interrupted``, or the run's own resume hint) and exit code 130; output
    piped into a reader that stopped (``| head``) ends quietly."""
    try:
        return body()
    except (UserError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except FinishedRun as finished:  # --resume of a finished run: one line, nothing changed, exit 0
        print(finished)
        return finished.results
    except RunInterrupted as error:
        print(error, file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    except KeyboardInterrupt:  # before the run had a directory
        print(interrupted, file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    except BrokenPipeError:  # stdout piped into a reader that has stopped (| head): end quietly
        _silence_stdout()
        sys.exit(1)
    except SystemExit:  # --help | head: flush now, or the interpreter reports the broken pipe at exit
        _flush_stdout()
        raise


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of a broken pipe does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a descriptor
        pass


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
