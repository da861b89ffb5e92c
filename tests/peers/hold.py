"""Holding a run's trainers still while AWS's notice travels to them.

On AWS a run is hours long and the notice lands mid-run. Here a run is a few dozen steps of a tiny
GRU, which a fast machine trains in about a second: a notice sent after the trainer's third batch
(through FIS's stand-in, after `fab watch` has looked, or after the laptop has left) could reach a
trainer that has already finished, and the journey has nothing to resume. Sizing the run to the
slowest machine costs every run minutes of CPU and still races on the fastest.

So a test that wants its notice to land mid-run stops the trainer's ranks (SIGSTOP) once they have
logged the batch it waits for, sends the notice, and lets them go (SIGCONT) once the watcher's stop
signal is pending on every noticed rank: the trainer then stops at its next step boundary, on any
machine. The ranks are the processes the trainer announces in RUN_DIR/ranks (ml/stopping.py: its
handlers are in place), which is also whom the watcher signals. A test that fails while holding
lets them go on the way out (a `with` block), so no trainer is left stopped.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from common import pidfile
from ec2.remote.spot_watch import parse_signal
from ec2.remote.trainrun import TRAINER_SIGNAL

STOP_SIGNAL = parse_signal(TRAINER_SIGNAL)  # what the notice watcher sends the trainer


def rank_pids(run_dir: Path) -> list[int]:
    """The pids the trainer's ranks announced in RUN_DIR/ranks, those still the process that
    announced it (a rank that has ended leaves its file, and its pid may be another process's by
    now: common/pidfile.py)."""
    pids = []
    for path in sorted((Path(run_dir) / "ranks").glob("rank-*.pid")):
        announced = pidfile.parse(path.read_text())
        if announced is not None and pidfile.start_time(announced[0]) == announced[1]:
            pids.append(announced[0])
    return pids


def pending(pid: int, sig: signal.Signals = STOP_SIGNAL) -> bool | None:
    """Whether `sig` waits for process `pid` (sent to the process or one of its threads); None when
    the process has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    pending_lines = [line for line in status.splitlines() if line.startswith(("ShdPnd:", "SigPnd:"))]
    masks = [int(line.split()[1], 16) for line in pending_lines]
    return any(mask >> (sig - 1) & 1 for mask in masks)


def state(pid: int) -> str | None:
    """The process's state letter (/proc/PID/stat: T when stopped), None when it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2]


class Held:
    """The ranks of the runs in `run_dirs`, stopped until `go()` (or the end of the `with`)."""

    def __init__(self, *run_dirs: Path):
        self.pids = {Path(d): rank_pids(d) for d in run_dirs}
        assert all(self.pids.values()), f"no announced ranks to hold in {self.pids}"
        self.stopped: list[int] = []
        for pid in (p for pids in self.pids.values() for p in pids):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue  # that rank has ended: the test sees it in the run's record
            self.stopped.append(pid)
        # SIGSTOP takes effect when the process next runs: until then a signal sent to it could
        # still be taken (its pending bit cleared) by a rank that then stops before handling it.
        end = time.monotonic() + 10
        while not all(state(pid) in ("T", "t", None) for pid in self.stopped):
            assert time.monotonic() < end, f"the ranks {self.stopped} did not stop"
            time.sleep(0.005)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *_exc) -> None:
        self.go()

    def go_once_signalled(self, *noticed: Path, timeout: float = 120) -> None:
        """Wait until the watcher's stop signal is pending on every rank of the `noticed` runs
        (or that rank is gone), then let every held rank go."""
        pids = [pid for d in noticed for pid in self.pids[Path(d)]]
        end = time.monotonic() + timeout
        try:
            while not all(pending(pid) is not False for pid in pids):
                assert time.monotonic() < end, f"no {STOP_SIGNAL.name} reached the held ranks {pids}"
                time.sleep(0.05)
        finally:
            self.go()

    def go(self) -> None:
        while self.stopped:
            try:
                os.kill(self.stopped.pop(), signal.SIGCONT)
            except ProcessLookupError:
                pass
