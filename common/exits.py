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

from common.errors import UNEXPECTED_EXIT, ToolkitError, print_causes

__all__ = ["UNEXPECTED_EXIT", "debug", "report"]


def debug() -> bool:
    return os.environ.get("SPOTRUN_DEBUG", "") not in ("", "0")


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
