"""Errors of the AWS and SSH half. Each message names the problem and the next step; the
fabfile turns them into one line and an exit code (no traceback)."""

from __future__ import annotations

from common.errors import AwsError, ConfigError, ToolkitError

__all__ = [
    "ToolkitError",
    "ConfigError",
    "AwsError",
    "CapacityError",
    "QuotaError",
    "InstanceNotFound",
    "InstanceGone",
    "KeyPairError",
    "RemoteCommandFailed",
    "ConnectionLost",
    "RunAlreadyExists",
]


class CapacityError(AwsError):
    """No instance type × zone choice had capacity."""


class QuotaError(AwsError):
    """A quota or price limit: trying other types or zones will not help."""


class InstanceNotFound(ToolkitError):
    """No instance (or registry entry) by that name."""


class InstanceGone(InstanceNotFound):
    """A registered instance that AWS ended while spotrun was talking to it."""


class KeyPairError(ToolkitError):
    """The key pair and the local key file disagree."""


class RemoteCommandFailed(ToolkitError):
    """A command on the instance exited non-zero."""

    def __init__(self, code: int, command: str, stderr: str = ""):
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        super().__init__(f"remote command exited {code}: {command}" + (f" ({tail})" if tail else ""))
        self.code = code
        self.command = command
        self.stderr = stderr


class ConnectionLost(ToolkitError):
    """SSH could not reach the instance (after retries)."""


class RunAlreadyExists(ToolkitError):
    """A run of that name is already going on the instance."""
