"""The hold (tests/peers/hold.py) on a real process: a held rank does not run its handler until
the signal is pending and it is let go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers.announced import announce
from tests.peers.hold import Held, pending

WHY = ("State:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:")

RANK = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(75))
open(sys.argv[1], "w").write("ready")
while True:
    time.sleep(0.01)
"""


def test_a_held_rank_handles_the_signal_only_once_let_go(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", RANK, str(ready)])
    try:
        while not ready.exists():
            time.sleep(0.01)
        (tmp_path / "ranks").mkdir()
        announce(tmp_path / "ranks" / "rank-0.pid", proc)
        with Held(tmp_path) as held:
            assert pending(proc.pid) is False
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.2)
            assert proc.poll() is None and pending(proc.pid) is True  # stopped: not handled yet
            held.go_once_signalled(tmp_path, timeout=5)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            pytest.fail("the rank did not end: " + "; ".join(x for x in status if x.startswith(WHY)))
        assert code == 75
        assert pending(proc.pid) is None  # gone
    finally:
        proc.kill()
        proc.wait()
