"""File locks (flock) between the processes that share the data cache, which a forked child does
not keep.

An flock belongs to the open file description, and fork shares descriptions: a DataLoader worker
forked while a prefetch thread holds a lock holds it too. The parent's close then releases
nothing, and the lock lives until the worker exits, blocking everyone who waits for it, the
parent's next prefetch included (a run once hung this way until its test's timeout). So every lock
file is opened here: its descriptor is registered under a guard that fork waits for, and a forked
child closes its copies first thing. That releases nothing the parent holds (the parent's
descriptor still refers to the description); the child takes its own locks on new descriptors.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Held while a descriptor is opened and registered, or closed and forgotten, and by fork (see
# below): so a child never inherits a lock descriptor this module does not know of.
_guard = threading.Lock()
_lock_fds: set[int] = set()


@contextmanager
def flocked(path: Path | str, exclusive: bool = True, wait: bool = True) -> Iterator[bool]:
    """Hold an flock on ``path`` (created if missing) for the block: True once held; with
    ``wait=False``, False at once when another process holds a conflicting lock."""
    with _guard:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _lock_fds.add(fd)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        with _guard:
            _lock_fds.discard(fd)
            os.close(fd)  # closing releases the lock


def _child_closes_the_parents_locks() -> None:
    for fd in _lock_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()
    _guard.release()  # taken before the fork by the thread that is now the child's only thread


os.register_at_fork(
    before=_guard.acquire, after_in_parent=_guard.release, after_in_child=_child_closes_the_parents_locks
)
