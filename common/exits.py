"""The edge of every program (`fab` tasks, `python -m ml.train`, `python -m ml.evaluate`): how a
failure leaves the process.

- a ToolkitError (expected: bad input, a refusal) → `error: <message>` and its exit code, no
  traceback; with SPOTRUN_DEBUG=1 the chain of causes is printed above it;
- Ctrl-C → `interrupted`, exit 130;
- anything else is a bug → the traceback, then `unexpected error: please report it with the
  traceback above`, exit 70 (EX_SOFTWARE).
"""

from __future__ import annotations

import os
import sys
import traceback

from common.errors import ToolkitError

UNEXPECTED_EXIT = 70


def debug() -> bool:
    return os.environ.get("SPOTRUN_DEBUG", "") not in ("", "0")


def print_causes(error: BaseException) -> None:
    """SPOTRUN_DEBUG=1: the expected error's own traceback and each cause under it (also the
    ones `raise ... from None` hides from Python's own report)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        print(
            "".join(traceback.format_exception(type(current), current, current.__traceback__, chain=False)),
            end="",
            file=sys.stderr,
        )
        current = current.__cause__ or current.__context__
        if current is not None:
            print("caused by:", file=sys.stderr)


def report(error: BaseException) -> int:
    """Print the one line (or, for a bug, the traceback and the plea) and return the exit code."""
    if isinstance(error, ToolkitError):
        if debug():
            print_causes(error)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    traceback.print_exception(type(error), error, error.__traceback__)
    print("unexpected error: please report it with the traceback above", file=sys.stderr)
    return UNEXPECTED_EXIT
