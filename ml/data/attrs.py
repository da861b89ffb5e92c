"""HDF5 attributes, checked where they are read: a value a real file can hold (a string where a
number belongs, NaN, a fraction, a negative count) is one DataError naming the file, the trial
group and the attribute, instead of a ValueError from ``int()`` or a silent truncation.

Types per the release (/work/shared/design/data-format.md): ``seq_len``, ``block_num``,
``trial_num``, ``n_time_steps`` int64; ``sentence_label``, ``session`` str. A missing attribute
keeps its default (test files carry no labels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ml.errors import DataError

_FIX = "fix the file (or leave the session out of dataset.sessions)"


def _scalar(value):
    """A one-element array (h5py gives those for attributes written as lists) as its element."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else (None if value.size == 0 else value)
    if isinstance(value, np.generic) and not isinstance(value, np.void):
        value = value.item()  # shown as 42, not np.int64(42)
    return value


def int_attr(
    attrs: Mapping, key: str, where: str, *, default: int = 0, low: int = 0, high: int | None = None
) -> int:
    """Attribute ``key`` as a whole number in ``low..high``; ``default`` when absent."""
    if key not in attrs:
        return default
    value = _scalar(attrs[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: attribute {key} is {value!r}, not a whole number; {_FIX}")
    if isinstance(value, float):
        if not math.isfinite(value) or not float(value).is_integer():
            raise DataError(f"{where}: attribute {key} is {float(value)}, not a whole number; {_FIX}")
    number = int(value)
    if number < low or (high is not None and number > high):
        span = f"{low} to {high}" if high is not None else f"{low} or more"
        raise DataError(f"{where}: attribute {key} is {number}, expected {span}; {_FIX}")
    return number


def text_attr(attrs: Mapping, key: str, where: str, default: str = "") -> str:
    """Attribute ``key`` as text (bytes decoded as UTF-8); ``default`` when absent."""
    if key not in attrs:
        return default
    value = _scalar(attrs[key])
    if value is None:
        return default
    if isinstance(value, bytes):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: attribute {key} is not UTF-8 text; {_FIX}") from None
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: attribute {key} is {value!r}, not text; {_FIX}")
