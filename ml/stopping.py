"""Graceful stop on a signal: SIGTERM or SIGUSR1 (the spot-notice watcher's) or a first Ctrl-C.

The handler only records the signal; it never raises. So whatever the trainer is doing when the
signal lands (a step, a validation batch, a checkpoint write) runs to its end, and the loop then
looks at the flag at its next safe point: it saves `last`, waits for the upload and exits with
ml.errors.STOPPED_RESUMABLE. A second Ctrl-C interrupts for real (KeyboardInterrupt), so a user
is never stuck.
"""

from __future__ import annotations

import signal
import threading

GRACEFUL = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """Set by a signal; read by the training loop and validation between batches."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> StopFlag:
        # Signal handlers can only be set from the main thread; elsewhere (a test calling the
        # loop from a worker thread) the flag simply stays unset.
        if threading.current_thread() is threading.main_thread():
            for sig in GRACEFUL:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # second Ctrl-C: the user really wants out
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
