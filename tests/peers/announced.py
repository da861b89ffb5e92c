"""Stand-in processes announced as the trainer's ranks and the notice watcher announce themselves
(common/pidfile.py), for the tests of who gets a signal."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import pidfile


@contextmanager
def sleepers(n: int, program: str = "sleep") -> Iterator[list[subprocess.Popen]]:
    """``n`` processes of ``program`` (sleep, or a link to it) that die of SIGUSR1's and TERM's
    default action, so who got one is plain; all ended when the block ends."""
    procs = [subprocess.Popen([program, "30"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def announce(path: Path, proc: subprocess.Popen, *, pid_reused: bool = False) -> None:
    """Write ``proc``'s announcement to ``path``, as it would itself. ``pid_reused``: the one an
    earlier process with its pid wrote (started a tick before it, and ended since)."""
    started = int(pidfile.start_time(proc.pid))
    path.write_text(pidfile.announcement(proc.pid, str(started - 1 if pid_reused else started)))
