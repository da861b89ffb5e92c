"""The edge between tasks and the library: every task argument is read and checked here before the
task body runs, and every failure leaves the process here as one line.

Arguments: `ARGUMENTS` says how each task parameter *name* is checked (`--port` is a TCP port in
every task that has one, `--name` an instance name, `--args` shell words ...). A task only needs
`@edge` under `@task`; a parameter this table does not know is read by its default's type (an int
default: a whole number), and `tests/test_task_arguments.py` fails until every number has a range
here (or in the task's own `@edge(checks={...})`).

Invoke would convert an `int`-defaulted flag itself and end a typo (`--port abc`) in a traceback,
so `edge` shows invoke numeric parameters without their default (None: invoke hands over the
string) and puts the default back when the flag is absent.

Failures (common/exits.py, shared with `python -m ml.train` and `ml.evaluate`):
- a ToolkitError (expected: bad input, a refusal) → `error: <message>` and its exit code, no
  traceback; with SPOTRUN_DEBUG=1 the chain of causes is printed above it;
- Ctrl-C → `interrupted`, exit 130;
- anything else is a bug → the traceback, then `unexpected error: please report it with the
  traceback above`, exit 70 (EX_SOFTWARE).
"""

from __future__ import annotations

import functools
import inspect
import math
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit

from common import s3uri
from common.checks import Range
from common.errors import ConfigError, ToolkitError  # noqa: F401 (tasks and tests raise it from here)
from common.exits import UNEXPECTED_EXIT, report  # noqa: F401 (UNEXPECTED_EXIT: part of the edge)
from ec2 import names
from ec2.config import DEFAULT_CONFIG, AwsConfig, load_aws_config


class ArgumentError(ConfigError):
    """A task argument that cannot be used as typed (exit 2, like a config error)."""


def flag(param: str) -> str:
    """The command-line spelling of a task parameter: max_recoveries → --max-recoveries."""
    return "--" + param.rstrip("_").replace("_", "-")


# ---- checks: (value, flag) → the value to pass on; raise ArgumentError ---------------------------

ArgCheck = Callable[[Any, str], Any]


def integer(bounds: Range, example: int) -> ArgCheck:
    """A whole number within ``bounds`` (a string from the command line, or an int in-process)."""

    def check(value: Any, label: str) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                raise ArgumentError(
                    f"{label} {value!r} is not a whole number; e.g. {label} {example}"
                ) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError(f"{label} {value!r} is not a whole number; e.g. {label} {example}")
        problem = bounds.problem(value)
        if problem:
            raise ArgumentError(f"{label} {problem}; e.g. {label} {example}")
        return value

    return check


def number(bounds: Range, example: float) -> ArgCheck:
    """A finite number within ``bounds``."""

    def check(value: Any, label: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ArgumentError(f"{label} {value!r} is not a number; e.g. {label} {example:g}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ArgumentError(f"{label} {value!r} is not a finite number; e.g. {label} {example:g}")
        problem = bounds.problem(value)
        if problem:
            raise ArgumentError(f"{label} {problem}; e.g. {label} {example:g}")
        return float(value)

    return check


def name(rule: names.NameRule) -> ArgCheck:
    return lambda value, label: rule.check(value, label)


def aws_shape(pattern, example: str) -> ArgCheck:
    return lambda value, label: names.aws_shape(pattern, value, label, example)


def comma_list(check: ArgCheck, example: str) -> ArgCheck:
    """Comma-separated values, each passing ``check`` (`--types g5.xlarge,g6.xlarge`, as README
    shows); the flag may also be repeated. Passes on the items, spaces around them dropped."""

    def run(value: Any, label: str) -> str:
        items = [item.strip() for item in str(value).split(",")]
        if not any(items):
            raise ArgumentError(f"{label} {value!r} names nothing; e.g. {label} {example}")
        return ",".join(check(item, label) for item in items if item)

    return run


def shell_words(value: Any, label: str) -> str:
    """Words split like a shell (`--args "a=1 b='x y'"`): an unclosed quote is refused here."""
    try:
        shlex.split(value)
    except ValueError as e:
        raise ArgumentError(
            f"{label} {value!r} cannot be split into words ({e}); close the quote, e.g. "
            f"{label} \"a=1 b='x y'\""
        ) from None
    return value


def existing_file(value: Any, label: str) -> str:
    if not Path(value).expanduser().is_file():
        raise ArgumentError(f"{label} {value}: no such file here; pass {label} PATH to an existing file")
    return value


def one_line(value: Any, label: str) -> Any:
    names.one_line(value, label)
    return value


def s3_uri(value: Any, label: str) -> str:
    """An s3://bucket/prefix URI by S3's naming rules (common/s3uri.py)."""
    names.one_line(value, label)
    problem = s3uri.s3_problem(value)
    if problem:
        raise ArgumentError(f"{label} {value!r} {problem}; e.g. {label} {s3uri.EXAMPLE}")
    return value


def s3_or_path(value: Any, label: str) -> str:
    """A local path, or (when it looks like one) a valid S3 URI."""
    return s3_uri(value, label) if s3uri.looks_like_s3(value) else one_line(value, label)


def non_empty(value: Any, label: str) -> Any:
    if not str(value).strip():
        raise ArgumentError(f"{label} is empty; give it a value, e.g. {label} hostname")
    return value


# Every task parameter name, and how it is checked wherever it appears. Numbers carry their range.
ARGUMENTS: dict[str, ArgCheck] = {
    "name": name(names.INSTANCE),
    "run": name(names.RUN),
    "run_name": name(names.RUN),
    "host": name(names.HOST),
    "user": name(names.SSH_USER),
    "port": integer(Range(1, 65535, why="a TCP port"), 22),
    "local_port": integer(Range(1, 65535, why="a TCP port"), 8888),
    "rdzv_port": integer(Range(1, 65535, why="a TCP port"), 29500),
    "lines": integer(Range(1, 1_000_000), 200),
    "nodes": integer(Range(1, 64, why="machines in the cluster"), 2),
    "node": integer(Range(0, 63, why="a node of the cluster, 0 first"), 1),
    # Checked here, not on the machine: a bad --gpus must not cost an instance launch first.
    "gpus": integer(Range(1, 64, why="trainer processes per machine, one per GPU"), 2),
    "max_recoveries": integer(Range(0, 100, why="replacement instances"), 3),
    # Floors keep a typo (1e-9) from polling AWS, the instance or IMDS in a tight loop.
    "poll": number(Range(0.1, 86400, why="seconds between looks at the instance"), 30),
    "imds_poll": number(Range(0.1, 3600, why="seconds between IMDS questions"), 5),
    "download_every": number(Range(1, why="seconds between checkpoint downloads"), 600),
    "rehearse_after": number(Range(0, 3600, why="seconds of training before `fab smoke` interrupts it"), 0),
    "hours": number(Range(above=0, high=24 * 366, why="hours"), 1),
    "gb": integer(Range(1, 16384, why="GiB of gp3"), 100),
    "request_quota": integer(Range(1, 100_000, why="vCPUs"), 8),
    "steps": integer(Range(1, 100_000_000, why="training steps"), 100),
    "warmup": integer(Range(0, 100_000, why="untimed steps before the timed ones"), 10),
    "region": aws_shape(names.REGION, "us-east-1"),
    "zone": aws_shape(names.ZONE, "us-east-1a"),
    "types": comma_list(aws_shape(names.INSTANCE_TYPE, "g5.xlarge"), "g5.xlarge,g6.xlarge"),
    "args": shell_words,
    "train_config": existing_file,
    "key": existing_file,
    "config": one_line,
    "cmd": non_empty,
    "remote_dir": one_line,
    "output_dir": one_line,
    "dest": one_line,
    "data_uri": s3_or_path,
    "python": one_line,
    "setup_python": one_line,
    "src": one_line,
    "uri": s3_uri,
    "logdir": one_line,
    "cwd": one_line,
    "path": one_line,
    "set_": one_line,
}


def _fallback(default: Any) -> ArgCheck | None:
    """For a parameter ARGUMENTS lacks: at least a number stays a number (one line, no range)."""
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return integer(Range(), default)
    if isinstance(default, float):
        return number(Range(), default)
    return None


def _invoke_signature(sig: inspect.Signature) -> inspect.Signature:
    """The signature invoke sees: numeric defaults hidden (None), so invoke passes the raw text."""
    params = []
    for p in sig.parameters.values():
        if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
            p = p.replace(default=None)
        params.append(p)
    return sig.replace(parameters=params)


def check_arguments(func: Callable, bound: inspect.BoundArguments, checks: dict[str, ArgCheck]) -> None:
    """Check every argument the caller gave, in place; an absent number gets its default back.
    Defaults are not checked: a task may default to a file a project lacks (`fab sync` without
    configs/rnn_args.yaml syncs the code and skips the checkpoint hand-over)."""
    sig = inspect.signature(func)
    for pname, param in list(sig.parameters.items())[1:]:  # [0] is invoke's Context
        if pname not in bound.arguments:
            continue
        value = bound.arguments[pname]
        if value is None or value is param.default:
            bound.arguments[pname] = param.default
            continue
        check = checks.get(pname) or ARGUMENTS.get(pname) or _fallback(param.default)
        if check is None:
            continue
        if isinstance(value, (list, tuple)):  # a repeatable flag (@task(iterable=[...])): each one
            bound.arguments[pname] = [check(v, flag(pname)) for v in value]
        else:
            bound.arguments[pname] = check(value, flag(pname))


def check_for(task_body: Callable, pname: str) -> ArgCheck | None:
    """The check `edge` applies to parameter ``pname`` of a task (for tests and docs)."""
    own = getattr(task_body, "edge_checks", {})
    default = inspect.signature(inspect.unwrap(task_body)).parameters[pname].default
    return own.get(pname) or ARGUMENTS.get(pname) or _fallback(default)


# ---- failures -------------------------------------------------------------------------------------


def edge(func: Callable | None = None, *, checks: dict[str, ArgCheck] | None = None):
    """Wrap a task body (under `@task`): check its arguments, then turn failures into one line.

    `@edge` or `@edge(checks={"count": integer(Range(1, 8), 2)})` for a parameter of the task's own.
    """
    if func is None:
        return functools.partial(edge, checks=checks)
    own = dict(checks or {})
    sig = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            bound = sig.bind_partial(*args, **kwargs)
            check_arguments(func, bound, own)
            return func(*bound.args, **bound.kwargs)
        except Exit:
            raise
        except (Exception, KeyboardInterrupt) as e:
            raise Exit(code=report(e)) from None

    wrapper.__signature__ = _invoke_signature(sig)
    wrapper.edge_checks = own
    return wrapper


# ---- config ---------------------------------------------------------------------------------------


def aws_config(config: str | None, overrides: list[str] | None) -> AwsConfig:
    """The config every task reads: `--config PATH` and repeatable `--set key=value`."""
    return load_aws_config(config or DEFAULT_CONFIG, list(overrides or []))


def machine_name(name: str | None, cfg: AwsConfig) -> str:
    return name or cfg.name
