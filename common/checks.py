"""Declarative value checks: a range (or any check) per dataclass field, run before anything else.

    ssh_port: int = checked(22, Range(1, 65535))
    idle_minutes: int = checked(30, Range(0))
    check_fields(cfg)   # FieldError naming the first field whose value is out of range

The same `Range` checks a command-line flag (tasks/edge.py), so a number means the same thing in a
config file and on the command line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError
from common.s3uri import is_s3


class FieldError(ConfigError):
    """A field's value is out of its declared range (or fails its declared check). ``key`` lets the
    loader say where the value came from (the file or an override)."""

    def __init__(self, key: str, problem: str, message: str | None = None):
        super().__init__(message or f"{key} {problem}")
        self.key = key
        self.problem = problem


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    """``low <= value <= high``; ``above``: ``value > above`` (a positive duration). None: open."""

    low: float | None = None
    high: float | None = None
    above: float | None = None
    # One short phrase on why, shown after the range ("the instance's hard cost cap").
    why: str = ""

    def describe(self) -> str:
        if self.above is not None:
            text = f"greater than {_fmt(self.above)}"
            return text + (f" and at most {_fmt(self.high)}" if self.high is not None else "")
        if self.low is not None and self.high is not None:
            return f"from {_fmt(self.low)} to {_fmt(self.high)}"
        if self.low is not None:
            return f"{_fmt(self.low)} or more"
        if self.high is not None:
            return f"at most {_fmt(self.high)}"
        return "a number"

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is in range, else what is wrong (for a message)."""
        if value is None:
            return None  # an Optional field left unset; the type says whether None is allowed
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number ({self.describe()}), got {value!r}"
        low_ok = self.low is None or value >= self.low
        above_ok = self.above is None or value > self.above
        high_ok = self.high is None or value <= self.high
        if low_ok and above_ok and high_ok:
            return None
        return f"must be {self.describe()}{f' ({self.why})' if self.why else ''}, got {_fmt(value)}"


# A check is a Range or a callable(value, key) that raises a ConfigError.
Check = Range | Callable[[Any, str], Any]


def checked(default: Any = dataclasses.MISSING, check: Check | None = None, **kwargs) -> Any:
    """A dataclass field carrying its check (``default_factory=`` passes through)."""
    return dataclasses.field(default=default, metadata={"check": check}, **kwargs)


def run_check(check: Check, value: Any, key: str) -> None:
    if isinstance(check, Range):
        problem = check.problem(value)
        if problem:
            raise FieldError(key, problem)
    elif value is not None:
        try:
            check(value, key)
        except FieldError:
            raise
        except ConfigError as e:
            raise FieldError(key, str(e), message=str(e)) from None


def check_fields(obj: Any, prefix: str = "") -> None:
    """Run every field's declared check (recursing into nested dataclasses)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        check = f.metadata.get("check")
        if check is not None:
            run_check(check, value, prefix + f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, prefix + f.name + ".")


def declared_checks(cls: type) -> dict[str, Check]:
    """field name → its declared check (for tests that every number has a range)."""
    return {f.name: f.metadata["check"] for f in dataclasses.fields(cls) if f.metadata.get("check")}


# The runs whose checkpoints must outlive the laptop's view of them, and why S3 (one line each).
MULTI_NODE = (
    "a multi-node run",
    "rank 0 writes them; the restarted cluster, replacement included, resumes from them",
)
DETACHED = ("a detached run", "the laptop may be gone when the next instance resumes from them")
REHEARSAL = ("a rehearsed run", "`fab rehearse` checks that the notice puts the checkpoint there")


def require_s3_checkpoints(checkpoint_dir: str | None, run: tuple[str, str]) -> str:
    """The one "needs S3" check (`fab run --detach`, `fab run --nodes`, `fab train --nodes`,
    `fab rehearse`): checkpoint_dir itself, or one line saying why S3 and how to set it. `run`:
    MULTI_NODE, DETACHED, REHEARSAL."""
    kind, why = run
    if checkpoint_dir and is_s3(checkpoint_dir):
        return checkpoint_dir
    raise ConfigError(
        f"{kind} keeps its checkpoints in S3 ({why}); checkpoint_dir is {checkpoint_dir or 'not set'}: "
        "pass --args 'checkpoint_dir=s3://BUCKET/PREFIX' or set it in the train config"
    )
