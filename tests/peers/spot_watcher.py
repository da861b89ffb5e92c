"""The notice watcher (`python -m ec2.remote.spot_watch`) as a real subprocess in front of a
stand-in command that checkpoints on SIGUSR1 the way the trainer does (save, exit 75). Used by the
watcher's own tests and by the bounded-wait test of a silent metadata service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Steps until told to stop; on SIGUSR1 (or $STANDIN_SIGNAL) it writes a checkpoint (atomically) and exits 75.
STANDIN = r"""
import os, signal, sys, time
ckpt, steps = sys.argv[1], int(sys.argv[2])
stop = False
def on_signal(signum, frame):
    global stop
    stop = True
signum = getattr(signal, "SIG" + os.environ.get("STANDIN_SIGNAL", "USR1"))
signal.signal(signum, on_signal)
if os.environ.get("STANDIN_IGNORE"):
    signal.signal(signum, signal.SIG_IGN)
os.makedirs(ckpt, exist_ok=True)
open(ckpt + ".ready", "w").close()  # its handler is in place: a notice now finds it listening
for step in range(steps):
    print(f"step {step}", flush=True)
    if stop:
        tmp = os.path.join(ckpt, ".last.pt.tmp")
        with open(tmp, "wb") as f:
            f.write(os.urandom(300_000) + str(step).encode())
        os.replace(tmp, os.path.join(ckpt, "last.pt"))
        print(f"saved at step {step}", flush=True)
        sys.exit(75)
    time.sleep(0.05)
sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
"""


def watcher(tmp_path: Path, imds_url: str, *args: str, steps: int = 400, env: dict | None = None):
    """`python -m ec2.remote.spot_watch` in front of the stand-in, asking the IMDS at imds_url."""
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    argv = [
        sys.executable,
        "-m",
        "ec2.remote.spot_watch",
        "--run-dir",
        str(tmp_path / "run"),
        "--poll",
        "0.2",
        *args,
        "--",
        sys.executable,
        str(script),
        str(tmp_path / "ckpt"),
        str(steps),
    ]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "SPOTRUN_IMDS_URL": imds_url, **(env or {})}
    return subprocess.Popen(
        argv, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
