"""Benchmark the SSH loop on loopback: sync of a 5,000-small-file tree plus 3 × 20 MB files
(first and no-change), and 20 consecutive run-cmd round trips with and without connection reuse.

Starts its own sshd (the test fixture's server, as a context manager). One line per case.
    .venv/bin/python benchmarks/sync.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALL_FILES = 5000
LARGE_FILES = 3
LARGE_MB = 20
ROUND_TRIPS = 20


def make_tree(root: Path) -> int:
    total = 0
    for i in range(SMALL_FILES):
        d = root / f"pkg{i // 250:02d}"
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(512 + (i % 7) * 256)
        (d / f"m{i:04d}.py").write_bytes(data)
        total += len(data)
    for i in range(LARGE_FILES):
        data = os.urandom(LARGE_MB * 1024 * 1024)
        (root / f"big{i}.bin").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="srb", dir="/tmp"))
    os.environ["SPOTRUN_HOME"] = str(root / "s")
    from ec2.remote.ssh import Machine
    from ec2.remote.sync import sync_code
    from tests.peers.sshd import SshdServer

    tree = root / "proj"
    size = make_tree(tree)
    with SshdServer(root) as server:
        record = server.record(name="bench")
        machine = Machine(record)
        machine.run("true")  # host key accepted, master up: measure transfers, not the handshake
        for case in ("first sync", "no-change sync"):
            t0 = time.perf_counter()
            stats = sync_code(machine, tree)
            dt = time.perf_counter() - t0
            print(
                f"{case:<28} {SMALL_FILES} small + {LARGE_FILES}x{LARGE_MB} MB ({size / 1e6:.1f} MB): "
                f"{dt:6.2f} s, {stats.files_transferred} files, {stats.bytes_sent / 1e6:.3f} MB sent"
            )
        for label, control in (("with ControlMaster reuse", True), ("without reuse", False)):
            m = Machine(record, control=control)
            m.run("true")
            t0 = time.perf_counter()
            for _ in range(ROUND_TRIPS):
                m.run("true")
            dt = time.perf_counter() - t0
            each_ms = dt / ROUND_TRIPS * 1000
            print(f"{ROUND_TRIPS} run-cmd {label:<24} {dt:6.2f} s total, {each_ms:6.1f} ms each")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
