"""The notice watcher in front of a real torchrun (`--ranks N`): the notice reaches every rank,
never torchrun's agent, a rank that starts after the notice gets it too, and the run's exit is the
ranks' common one (75), not torchrun's 1. The ranks are a stand-in that uses the trainer's own
stop flag, exit report and collectives (ml/stopping.py, ml/distributed.py) without the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.peers.imds import wait_until

REPO = Path(__file__).resolve().parents[2]
RANK = r"""
import os, sys, time
import torch
from ml import distributed
from ml.stopping import StopFlag, report_exit
d = distributed.from_env()
time.sleep(float(os.environ.get("DELAY_RANK_" + os.environ.get("RANK", "0"), "0")))
stop = StopFlag().install()  # announces this rank to the watcher, as the trainer's does
distributed.init(d, torch.device("cpu"))
while not distributed.any_true(stop.requested, d):  # the trainer's per-step collective
    time.sleep(0.05)
code = int(os.environ.get("EXIT_RANK_" + os.environ.get("RANK", "0"), "75"))
report_exit(code)
distributed.barrier(d)
distributed.shutdown(d)
sys.exit(code)
"""


def start(tmp_path: Path, imds_url: str, env: dict[str, str], ranks: int = 2) -> subprocess.Popen:
    """The watcher with --ranks in front of `ranks` stand-in ranks: under torchrun, or (ranks=1)
    one process alone, as `fab train` starts the trainer on a machine with one GPU or none."""
    (tmp_path / "rank.py").write_text(RANK)
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    )
    argv = [
        sys.executable,
        "-m",
        "ec2.remote.spot_watch",
        "--run-dir",
        str(tmp_path / "run"),
        "--poll",
        "0.2",
        "--signal",
        "USR1",
        "--ranks",
        str(ranks),
        "--",
        sys.executable,
        *launcher,
        str(tmp_path / "rank.py"),
    ]
    full = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SPOTRUN_IMDS_URL": imds_url,
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.Popen(
        argv, cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_notice_reaches_every_rank_even_one_that_starts_later_and_75_is_the_exit(imds, tmp_path):
    proc = start(tmp_path, imds.url, {"DELAY_RANK_1": "3"})
    ranks = tmp_path / "run" / "ranks"
    wait_until(lambda: (ranks / "rank-0.pid").exists(), 60, "rank 0 to start")
    assert not (ranks / "rank-1.pid").exists()  # rank 1 is still starting when the notice comes
    imds.mark_interruption()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "ChildFailedError" in err  # torchrun itself said 1
    assert "sent SIGUSR1 to rank(s) 0:" in err and "started since the notice" in err
    record = json.loads((tmp_path / "run" / "preempted").read_text())
    assert record["command_exit_code"] == 75 and record["signal"] == "SIGUSR1"
    assert {p.read_text().strip() for p in ranks.glob("rank-*.exit")} == {"75"}


def test_ranks_that_disagree_leave_torchruns_exit(imds, tmp_path):
    proc = start(tmp_path, imds.url, {"EXIT_RANK_1": "3"})
    ranks = tmp_path / "run" / "ranks"
    wait_until(lambda: len(list(ranks.glob("rank-*.pid"))) == 2, 60, "both ranks to start")
    imds.mark_interruption()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert json.loads((tmp_path / "run" / "preempted").read_text())["command_exit_code"] == 1


def test_a_notice_before_a_lone_trainer_has_its_handlers_waits_for_them_and_75_is_the_exit(imds, tmp_path):
    """The notice comes while the one trainer process is still starting (importing torch takes
    seconds): SIGUSR1 then would kill it (exit 138, a failure). The watcher holds the signal until
    the trainer announces its handlers, and the trainer stops resumably."""
    imds.mark_interruption()
    proc = start(tmp_path, imds.url, {"DELAY_RANK_0": "2"}, ranks=1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "sent SIGUSR1 to rank(s) none" in err and "started since the notice" in err
    record = json.loads((tmp_path / "run" / "preempted").read_text())
    assert record["command_exit_code"] == 75
