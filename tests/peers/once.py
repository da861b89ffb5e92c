"""A folder made once per test run, shared by the xdist workers: a session fixture is per worker, so
six workers would make the same read-only dataset or venv six times.

The workers' base folders (popen-gwN) share a parent that belongs to this run only; the first
worker to take the lock makes the folder there, the others wait and reuse it. Without xdist the
run's own base folder is used. Only for what no test changes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def made_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``name``'s folder, filled by ``make(folder)`` by whichever worker of this run comes first."""
    shared = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died half-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder
