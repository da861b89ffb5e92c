"""Output paths, checked before the work: every entry point that writes (ml.train, ml.evaluate,
scripts/, `fab download`) asks here first, so a path that cannot be used is one line before
anything runs, not a traceback after an hour of evaluation.

    folder(path, "output_dir")                      # a folder to write into (made later if missing)
    file(path, "--out", (".csv",))                  # a file to write, with the extension it gets
    distinct({"--out": csv, "the chart": png})       # no two outputs (or an output and an input) alike

Writability is tried, not read from mode bits: root ignores those, while a read-only filesystem
or a file in the way stops root too. The probe leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from common.errors import OutputError


def _given(path: str | os.PathLike | None, label: str, kind: str) -> Path:
    # An empty value would be Path("") == the current folder: writing there is never what
    # `output_dir=` (a value left out) meant.
    if path is None or not str(path).strip():
        raise OutputError(f"{label} is empty (that would be the current folder); give it a {kind}")
    return Path(path).expanduser()


def _nearest_existing(target: Path) -> Path:
    existing = target.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _probe(folder: Path, label: str, shown: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".spotrun-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{label} {shown} cannot be written ({e.strerror} in {folder}); choose a writable {label} "
            "or fix the folder's permissions or mount"
        ) from e


def folder(path: str | os.PathLike | None, label: str) -> Path:
    """A folder files will be written into: not empty, not a file (nor under one), writable (or,
    when it does not exist yet, its nearest existing parent is). Returns it as a Path."""
    target = _given(path, label, "folder")
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise OutputError(f"{label} {path}: {existing} is a file, not a folder; choose another {label}")
    _probe(existing, label, str(path))
    return target


def file(path: str | os.PathLike | None, label: str, suffixes: Iterable[str]) -> Path:
    """A file that will be written: not empty, not an existing folder, ending in one of
    ``suffixes`` (what is written there), in a folder that can be written. Returns it as a Path."""
    target = _given(path, label, "file")
    allowed = tuple(s.lower() for s in suffixes)
    if target.is_dir():
        raise OutputError(f"{label} {path} is a folder; give a file name, e.g. {path}/result{allowed[0]}")
    if allowed and target.suffix.lower() not in allowed:
        raise OutputError(
            f"{label} {path}: this writes a {allowed[0]} file, so the name must end in "
            f"{' or '.join(allowed)}; e.g. {label} {target.with_suffix(allowed[0])}"
        )
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise OutputError(f"{label} {path}: {existing} is a file, not a folder; choose another {label}")
    if target.exists() and not os.access(target, os.W_OK) and os.geteuid() != 0:
        raise OutputError(f"{label} {path} is read-only; choose another {label} or make it writable")
    _probe(existing, label, str(path))
    return target


def distinct(paths: Mapping[str, str | os.PathLike | None]) -> None:
    """No two of ``paths`` (label → path; None skipped) are the same file or folder: one output
    would overwrite another, or an input."""
    seen: dict[Path, str] = {}
    for label, path in paths.items():
        if path is None or not str(path).strip():
            continue
        key = Path(os.path.realpath(Path(path).expanduser()))
        if key in seen:
            raise OutputError(
                f"{label} and {seen[key]} are the same path ({path}): one would overwrite the other; "
                f"give {label} another name"
            )
        seen[key] = label
