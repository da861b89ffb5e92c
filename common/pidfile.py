"""A process named in a file by its pid and its start time, so whoever signals it later signals
that process and never one that took its pid after it ended.

The trainer's ranks announce themselves this way to the notice watcher (ml/stopping.py,
ec2/remote/spot_watch.py). A rank killed by the kernel (out of memory) leaves its file behind,
and pids are reused (32,768 of them on many kernels): SIGUSR1 to a process that does not handle
it kills that process. The start time (field 22 of /proc/PID/stat, in clock ticks since boot)
tells the announced process from a later one with the same pid; the signal goes through a pidfd
opened before the check, so the process checked is the process signalled.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from common.atomic import atomic_write_text


def start_time(pid: int) -> str | None:
    """When process ``pid`` started (ticks since boot); None when there is no such process, or no
    /proc to ask."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def announcement(pid: int, started: str | None) -> str:
    """The text naming a process (``parse`` reads it back)."""
    return f"{pid} {started or ''}".rstrip() + "\n"


def announce(path: Path) -> None:
    """Write this process's pid and start time to ``path`` (atomically)."""
    pid = os.getpid()
    atomic_write_text(path, announcement(pid, start_time(pid)))


def parse(text: str) -> tuple[int, str | None] | None:
    """(pid, start time or None) from an announcement's text; None when it is not one."""
    words = text.split()
    if not words or not words[0].isdigit() or len(words) > 2:
        return None
    return int(words[0]), (words[1] if len(words) == 2 else None)


def send(pid: int, started: str | None, sig: signal.Signals) -> bool:
    """``sig`` to process ``pid`` if it is still the one that started at ``started`` (None: no
    start time was announced, so any process with the pid); False when it has ended."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfds (not Linux, or a kernel before 5.3)
        handle = None
    try:
        if started is not None and start_time(pid) != started:
            return False  # ended; the pid is another process's now, or nobody's
        if handle is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(handle, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if handle is not None:
            os.close(handle)


def signal_command(quoted_path: str, sig: str = "TERM") -> str:
    """A shell line that sends ``sig`` to the process announced in the file (already quoted for
    the shell), if it is still that process; it exits non-zero when there is no file, the process has
    ended, or its pid is another process's now. (Field 22 of /proc/PID/stat, counted from the last
    ') ', as ``start_time`` does.)"""
    now_started = "$(sed 's/.*) //' \"/proc/$pid/stat\" 2>/dev/null | cut -d' ' -f20)"
    return (
        f'{{ read -r pid started < {quoted_path}; }} 2>/dev/null && [ -n "$pid" ] && '
        f'{{ [ -z "$started" ] || [ "{now_started}" = "$started" ]; }} && kill -{sig} "$pid"'
    )
