"""Attended `fab run` as the end-to-end tests drive it: in this process (a thread, so the test can
play AWS meanwhile) or as the user's own process, and the instances it left on moto."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from invoke import Context
from invoke.exceptions import Exit

from tasks import managed
from tests.peers.fab_process import DEFAULT_SIGINT

REPO = Path(__file__).resolve().parents[2]


def start_fab_run(config: Path, dest: Path, args: list[str], **kw) -> tuple[threading.Thread, dict]:
    """`fab run --name job` in a thread; the dict gets its exit code or the error it raised."""
    result: dict = {}

    def go():
        try:
            managed.run(
                Context(),
                name="job",
                config=str(config),
                train_config="configs/demo.yaml",
                args=" ".join(args),
                poll=0.5,
                imds_poll=0.2,
                no_gpu=True,
                dest=str(dest),
                setup_python=str(REPO / ".venv/bin/python"),
                **kw,
            )
        except Exit as e:
            result["exit"] = e.code
        except BaseException as e:  # noqa: BLE001 - handed to the test thread to fail loudly
            result["error"] = e

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def join_while_progressing(
    thread: threading.Thread, *watched: Path, stall_s: float = 60, limit_s: float = 600
) -> None:
    """Wait for a run that should finish: as long as any watched file (the trainer's log, run.json)
    keeps changing, up to limit_s. A slow box (CI runs six workers on two cores) trains slower, but
    a run stuck for stall_s is stuck; the caller's is_alive() assert then fails."""

    def snapshot():
        return tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None for p in watched)

    began = last_change = time.monotonic()
    seen = snapshot()
    while thread.is_alive() and time.monotonic() - began < limit_s:
        thread.join(timeout=2)
        now = snapshot()
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            return


def live_instances(ec2) -> list[dict]:
    """The pending or running instances spotrun launched."""
    return [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
        and any(t["Key"] == "spotrun:name" for t in i.get("Tags", []))
    ]


def launched_ids(ec2) -> set[str]:
    """Every instance spotrun launched, in any state."""
    return {
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if any(t["Key"] == "spotrun:name" for t in i.get("Tags", []))
    }


def fab_run_process(config: Path, dest: Path, args: list[str], stdin) -> subprocess.Popen:
    """`fab run` as the user starts it, from a shell: its own process, SIGINT at its default."""
    return subprocess.Popen(
        [
            sys.executable,
            *DEFAULT_SIGINT,
            str(REPO / ".venv/bin/fab"),
            "run",
            "--name",
            "job",
            "--config",
            str(config),
            "--train-config",
            "configs/demo.yaml",
            "--args",
            " ".join(args),
            "--poll",
            "0.5",
            "--no-gpu",
            "--setup-python",
            str(REPO / ".venv/bin/python"),
            "--dest",
            str(dest),
        ],
        cwd=REPO,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
