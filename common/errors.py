"""The one exception type that entry points turn into a one-line message and an exit code.

Library code raises these for *expected* failures (bad input, a missing file, an AWS refusal);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
