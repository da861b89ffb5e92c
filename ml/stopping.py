"""Graceful stop on a signal: SIGTERM or SIGUSR1 (the spot-notice watcher's) or a first Ctrl-C;
and a checkpoint without stopping on SIGUSR2 (the watcher's answer to a rebalance recommendation
with `on_rebalance: checkpoint`): the loop saves `last` at its next step boundary and trains on.

The handler only records the signal; it never raises. So whatever the trainer is doing when the
signal lands (a step, a validation batch, a checkpoint write) runs to its end, and the loop then
looks at the flag at its next safe point: it saves `last`, waits for the upload and exits with
ml.errors.STOPPED_RESUMABLE. A second Ctrl-C interrupts for real (KeyboardInterrupt), so a user
is never stuck.

Under torchrun the spot-notice watcher (ec2/remote/spot_watch.py --ranks N) must reach the ranks,
not torchrun's agent (which answers a signal by killing its workers after a timeout), and torchrun
exits 1 whatever code its workers exit with. So when the watcher names a folder in
SPOTRUN_RANKS_DIR, each rank writes `rank-R.pid` there once its handlers are in place (from then
on the watcher may signal it: its pid and start time, common/pidfile.py) and `rank-R.exit` with
its exit code when it is done.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from common import pidfile
from common.atomic import atomic_write_text

GRACEFUL = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
SAVE_NOW = signal.SIGUSR2
RANKS_DIR_ENV = "SPOTRUN_RANKS_DIR"


def _rank_file(suffix: str) -> Path | None:
    folder = os.environ.get(RANKS_DIR_ENV)
    if not folder:
        return None
    return Path(folder) / f"rank-{int(os.environ.get('RANK', '0'))}.{suffix}"


def report_exit(code: int) -> None:
    """Tell the watcher how this rank ended (75: stopped, checkpoint saved). Call it once the rank's
    own work is done, before the ranks part: torchrun ends the others when the first one exits."""
    if (path := _rank_file("exit")) is not None:
        atomic_write_text(path, f"{code}\n")


class StopFlag:
    """Set by a signal; read by the training loop and validation between batches."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.save_asked = False  # SAVE_NOW arrived since the loop last looked (take_save)
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def take_save(self) -> bool:
        """Whether a save was asked for since the last call (and forget it)."""
        asked, self.save_asked = self.save_asked, False
        return asked

    def install(self) -> StopFlag:
        # Signal handlers can only be set from the main thread; elsewhere (a test calling the
        # loop from a worker thread) the flag simply stays unset.
        if threading.current_thread() is threading.main_thread():
            for sig in (*GRACEFUL, SAVE_NOW):
                self._previous[sig] = signal.signal(sig, self._handle)
            if (path := _rank_file("pid")) is not None:
                pidfile.announce(path)  # its pid and start time: a later process with the pid is not it
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if signum == SAVE_NOW:
            self.save_asked = True
            return
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # second Ctrl-C: the user really wants out
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
