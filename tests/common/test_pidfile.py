"""A process announced by pid and start time (common/pidfile.py): the notice watcher signals the
rank that announced itself, never a process that took its pid after it ended."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from common import pidfile
from tests.peers.announced import announce, sleepers


def test_an_announcement_names_this_process_by_pid_and_start_time(tmp_path):
    path = tmp_path / "rank-0.pid"
    code = f"from pathlib import Path; from common import pidfile; pidfile.announce(Path({str(path)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.returncode == 0
    pid, started = pidfile.parse(path.read_text())
    assert started is not None and started.isdigit()
    # The process has ended: no process, or another one, has its pid now.
    assert pidfile.start_time(pid) != started


def test_the_announced_process_gets_the_signal(tmp_path):
    with sleepers(1) as (rank,):
        assert pidfile.send(rank.pid, pidfile.start_time(rank.pid), signal.SIGUSR1)
        assert rank.wait(5) == -signal.SIGUSR1


def test_a_process_that_took_an_ended_ranks_pid_is_not_signalled():
    """The file names a pid and a start time; the process with that pid now started at another
    time (the rank was killed, and its pid reused): nothing is sent, and the caller hears so."""
    with sleepers(1) as (stranger,):
        started = int(pidfile.start_time(stranger.pid))
        assert pidfile.send(stranger.pid, str(started - 1), signal.SIGUSR1) is False
        assert stranger.poll() is None


def test_an_ended_process_is_not_signalled_and_says_so():
    with sleepers(1) as (gone,):
        started = pidfile.start_time(gone.pid)
    assert pidfile.send(gone.pid, started, signal.SIGUSR1) is False


def test_an_old_announcement_without_a_start_time_is_signalled_by_pid(tmp_path):
    """A pid alone (a trainer from before start times) still works as before."""
    with sleepers(1) as (rank,):
        assert pidfile.parse(f"{rank.pid}\n") == (rank.pid, None)
        assert pidfile.send(rank.pid, None, signal.SIGUSR1)
        assert rank.wait(5) == -signal.SIGUSR1


def test_what_is_not_an_announcement_is_none():
    for text in ("", "abc", "12 34 56", "-3 1"):
        assert pidfile.parse(text) is None


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_start_time(tmp_path):
    """The start time is counted from the last ')' of /proc/PID/stat: a name with spaces and
    parentheses still gives a start time between those of the processes started around it."""
    odd = tmp_path / "a b) (c"
    odd.symlink_to("/bin/sleep")
    with sleepers(1) as (first,), sleepers(1, str(odd)) as (named,), sleepers(1) as (last,):
        before, odd_one, after = (int(pidfile.start_time(p.pid)) for p in (first, named, last))
        assert before <= odd_one <= after


def _stop(path, sig: str = "TERM") -> int:
    return subprocess.run(["bash", "-c", pidfile.signal_command(str(path), sig)]).returncode


def test_the_stop_line_reaches_the_announced_watcher_and_no_stranger(tmp_path):
    """`fab stop` and a detached run's deadline send TERM to the watcher named in watcher.pid
    (ec2/remote/runs.graceful_stop_command) through this line: the announced process gets it; a
    process that took an ended watcher's pid does not, and the line exits 1 (no watched run)."""
    path = tmp_path / "watcher.pid"
    with sleepers(2) as (watcher, stranger):
        announce(path, watcher)
        assert _stop(path) == 0 and watcher.wait(5) == -signal.SIGTERM
        announce(path, stranger, pid_reused=True)
        assert _stop(path) == 1
        time.sleep(0.2)
        assert stranger.poll() is None


def test_the_stop_line_without_a_file_or_process_exits_1_quietly(tmp_path):
    path = tmp_path / "watcher.pid"
    done = subprocess.run(["bash", "-c", pidfile.signal_command(str(path))], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (1, "")
    with sleepers(1) as (gone,):
        announce(path, gone)
    assert _stop(path) == 1
