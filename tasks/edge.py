"""The edge between tasks and the library: config loading and turning expected failures into one
line on stderr and a non-zero exit (invoke's Exit), never a traceback."""

from __future__ import annotations

import functools
import sys

from invoke.exceptions import Exit

from common.errors import ToolkitError
from ec2.config import DEFAULT_CONFIG, AwsConfig, load_aws_config


def edge(func):
    """Wrap a task body: ToolkitError → `error: <message>` and its exit code; Ctrl-C → 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ToolkitError as e:
            print(f"error: {e}", file=sys.stderr)
            raise Exit(code=e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper


def aws_config(config: str | None, overrides: list[str] | None) -> AwsConfig:
    """The config every task reads: `--config PATH` and repeatable `--set key=value`."""
    return load_aws_config(config or DEFAULT_CONFIG, list(overrides or []))


def machine_name(name: str | None, cfg: AwsConfig) -> str:
    return name or cfg.name
