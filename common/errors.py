"""The one exception type that entry points turn into a one-line message and an exit code.

Library code raises these for *expected* failures (bad input, a missing file, an AWS refusal);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import traceback

# Exit codes every side agrees on: the trainer returns them, the boot on the instance and the
# laptop's watch loop read them (ml/ and the instance side import nothing from ec2/, so they live here).
# `python -m ml.train` after SIGTERM/SIGUSR1: the checkpoint is saved (and copied up) and
# `resume: auto` continues from it. Distinct from 0 (finished) and 1/2 (failed).
STOPPED_RESUMABLE = 75
# A bug, not an expected failure: the traceback is printed with a request to report it (EX_SOFTWARE).
UNEXPECTED_EXIT = 70


class ToolkitError(Exception):
    """An expected failure. The message names the problem and the next step."""

    exit_code = 1


class ConfigError(ToolkitError):
    """A config file or override that cannot be used as written."""

    exit_code = 2


class OutputError(ToolkitError):
    """An output path that cannot be used: not writable, a file where a folder goes (or the
    reverse), the wrong extension, or the same path as another output (common/outputs.py)."""

    exit_code = 6


class AwsError(ToolkitError):
    """An AWS API refusal, carrying the AWS error code."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(f"{message} [{code}]" if code else message)
        self.code = code


class EndpointUnreachable(AwsError):
    """The AWS endpoint refused the connection or did not answer in time: a network or endpoint
    problem, not one of credentials or permissions."""


def print_causes(error: BaseException) -> None:
    """SPOTRUN_DEBUG=1 at an entry point: the expected error's own traceback and each cause under
    it (also the ones `raise ... from None` hides from Python's own report)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = traceback.format_exception(type(current), current, current.__traceback__, chain=False)
        print("".join(lines), end="", file=sys.stderr)
        current = current.__cause__ or current.__context__
        if current is not None:
            print("caused by:", file=sys.stderr)
