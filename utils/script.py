"""The error handling every script shares: bad input ends with one line on stderr and its exit code."""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

from utils.errors import NonFiniteLossError, UserError

T = TypeVar("T")


def exit_on_error(body: Callable[[], T]) -> T:
    """Run ``body()``. A :class:`UserError` (exit code 2) or :class:`NonFiniteLossError` (exit code 3) ends the
    script with one line ``error: ...`` on stderr and no traceback."""
    try:
        return body()
    except (UserError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
