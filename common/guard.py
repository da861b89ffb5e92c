"""Destructive commands act only on exactly what the user named.

Every command that terminates, deletes, overwrites or re-registers something asks here before it
acts (tests/test_destructive_commands.py lists them all):

    exclusive({"--all": all_, "--name": name}, "--all ends every instance, --name one")
        flags that disagree are refused, never resolved in the destructive direction;
    unless_forced(force, target="--out data/x", lost=[...], verb="overwrite", instead="...")
        a target holding something this command did not make is refused, naming what would be
        lost, unless the user said --force;
    foreign(paths, ours)
        which of the files a writer would replace it did not write itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.errors import ConfigError


class FlagConflict(ConfigError):
    """Two flags that ask for different things (exit 2, like any argument that cannot be used)."""


class WouldLose(ConfigError):
    """The command would destroy something it did not make and was not told to: as written it
    cannot run (exit 2); with --force it would."""


def _given(value: Any) -> bool:
    return value not in (None, False, "", [], ())


def exclusive(flags: Mapping[str, Any], why: str) -> None:
    """At most one of ``flags`` (spelling → value) is given; ``why`` says how they disagree."""
    given = [f for f, v in flags.items() if _given(v)]
    if len(given) > 1:
        raise FlagConflict(f"{' and '.join(given)} disagree ({why}); give only one of them")


def listing(things: Sequence[str], shown: int = 3) -> str:
    """``a, b, c and 4 more``: what would be lost, short enough for one line."""
    head = ", ".join(things[:shown])
    return head + (f" and {len(things) - shown} more" if len(things) > shown else "")


def unless_forced(
    force: bool,
    *,
    target: str,
    lost: Sequence[str],
    verb: str,
    instead: str,
    flag: str | None = "--force",
) -> None:
    """Refuse: ``target`` would ``verb`` ``lost`` (what would be lost, each naming whose it is),
    unless ``force``. ``instead`` is the other way out (another path, another name); with no
    ``flag`` it is the only one (a command that never replaces such a thing)."""
    if lost and not force:
        way_out = f"pass {flag} to do so, or {instead}" if flag else instead
        raise WouldLose(f"{target} would {verb} {listing(list(lost))}; {way_out}")


def foreign(paths: Iterable[Path], ours: Callable[[Path], bool]) -> list[Path]:
    """The existing files among ``paths`` that ``ours`` does not recognise as this command's own."""
    return [p for p in paths if p.exists() and not ours(p)]
