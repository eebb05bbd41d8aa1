"""User-facing errors: one clear message, exit code 2, no traceback.

Raise :class:`UserError` for anything the user can fix (a bad file, a bad config value, a
missing split). Entry points wrap their body in :func:`exit_on_user_error`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """An error caused by user input; the message names the file/line or config key and the fix."""


def fail(message: str) -> None:
    """Print ``error: message`` to stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


def exit_on_user_error(fn: F) -> F:
    """Decorator for CLI entry points: a UserError becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))

    return wrapper  # type: ignore[return-value]
