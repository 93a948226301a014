"""Shared CLI behaviour: project errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from immunoplex.errors import ImmunoplexError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print ImmunoplexError messages without a traceback and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImmunoplexError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
