"""Typed YAML configs: dataclasses, unknown keys rejected by name, dotted overrides.

    cfg = load_config(TrainConfig, "configs/demo.yaml", ["dataset.batch_size=32"])

Every error names the dotted key and where its value came from: the override as typed (a
command-line ``key=value`` or a ``--set``) when one set it, else the file, so the user knows
exactly what to fix. Range checks declared per field (common/checks.py) raise ``FieldError``;
``blame_field`` says where such a value came from in the same way.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.atomic import atomic_write_text
from common.checks import FieldError
from common.errors import ConfigError

T = TypeVar("T")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a key given twice is almost always a
    pasted block or a merge gone wrong, so it is refused naming the key and both lines."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not None:
                raise _DuplicateKey(f"line {line}: key {key!r} given twice (lines {first} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping. A missing, empty or non-text file, a syntax error and a key given twice
    are each a ConfigError naming the file (and the line), so nothing downstream is blamed for it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (check the path given to --config)")
    raw = p.read_bytes()
    try:
        # A NUL never occurs in YAML text (the spec's printable set excludes it); a binary file
        # (a checkpoint, an HDF5 file) passed as --config usually also fails to decode.
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (binary content); pass a YAML config to --config") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise ConfigError(f"{p} {e}; keep one of them") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{where}: malformed YAML ({problem}); fix the file") from None
    if data is None:
        raise ConfigError(
            f"{p}: the file is empty (no settings in it); write the settings or pass another file"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` → ("a.b.c", value parsed as YAML, so 3 is int and [x, y] a list)."""
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Set each ``dotted.key=value`` in a nested mapping (a copy). Unknown keys are caught later
    by ``from_dict``, which knows the schema."""
    out = _deep_copy(data)
    for text in overrides or []:
        key, value = parse_override(text)
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_config(
    cls: type[T],
    path: str | Path | None,
    overrides: list[str] | None = None,
    override_label: str = "override",
) -> T:
    """Load ``path`` (or only defaults when None) into dataclass ``cls`` with overrides applied.

    ``override_label`` names the overrides in errors: "override" for a command line's
    ``key=value``, "--set" for a fab flag."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        check_override_key(cls, text, override_label)
    data = apply_overrides(data, overrides)
    source = Blame(str(path) if path is not None else "defaults", overrides, override_label)
    return from_dict(cls, data, source=source)


class Blame:
    """Where the value of a dotted key came from: the last override that set it (or a section
    above it), else the file."""

    def __init__(self, file: str, overrides: list[str] | None, label: str = "override"):
        self.file = file
        self.label = label
        self.overrides = [(parse_override(text)[0], text) for text in overrides or []]

    def override_for(self, key: str) -> str | None:
        """The override (as typed) that set ``key``, or None when the file did."""
        key = re.sub(r"\[\d+\]", "", key)
        for okey, text in reversed(self.overrides):
            if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
                return text
        return None

    def where(self, key: str) -> str:
        text = self.override_for(key)
        return self.file if text is None else f"{self.label} {text!r}"

    def __str__(self) -> str:
        return self.file


def _where(source: str | Blame, key: str) -> str:
    return source.where(key) if isinstance(source, Blame) else source


def blame_field(
    e: FieldError, path: str | Path | None, overrides: list[str] | None, override_label: str = "override"
) -> ConfigError:
    """A range (or declared-check) failure as one line naming where the value came from."""
    text = Blame("", overrides, override_label).override_for(e.key)
    if text is not None:
        return ConfigError(f"{override_label} {text!r}: {e}; change that value")
    if path is None:
        return ConfigError(f"built-in default: {e}; set {e.key} in the config file")
    return ConfigError(f"{path}: {e}; edit {e.key} in {path}")


def check_override_key(cls: type, text: str, label: str = "override") -> None:
    """An override naming a key the schema lacks is the command line's mistake, not the file's:
    say so, naming the override as typed."""
    key, _ = parse_override(text)
    tp: Any = cls
    for i, part in enumerate(key.split(".")):
        tp = _dataclass_of(tp)
        if tp is None:
            return  # below a free-form mapping (e.g. tags): anything goes
        hints = typing.get_type_hints(tp)
        if part not in {f.name for f in dataclasses.fields(tp) if f.init}:
            raise ConfigError(
                f"{label} {text!r}: unknown key {'.'.join(key.split('.')[: i + 1])}; "
                "remove it or check its spelling"
            )
        tp = hints[part]


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass behind ``tp`` (also inside ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def from_dict(cls: type[T], data: dict[str, Any], source: str | Blame = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type. ``source`` names where
    the values came from: a string, or a Blame telling the file from each override."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_where(source, prefix.rstrip('.'))}: {prefix or 'top level'} must be a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(prefix + str(k) for k in unknown)
        where = _where(source, prefix + str(unknown[0]))
        raise ConfigError(f"{where}: unknown key {names}; remove it or check its spelling")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix or ''}{e}") from None


def _coerce(tp: Any, value: Any, source: str | Blame, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{_where(source, key)}: {key} must be one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(source, key)}: {key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(inner, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, key)}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(source, key)}: {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{_where(source, key)}: {key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        raise ConfigError(f"{_where(source, key)}: {key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{_where(source, key)}: {key} must be a string, got {value!r}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (saved beside each checkpoint)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
