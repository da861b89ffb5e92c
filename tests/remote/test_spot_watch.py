"""The notice watcher as a real subprocess: loopback IMDS, moto's S3 server, a stand-in command
that checkpoints on SIGUSR1 the way the trainer does (save, exit 75)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from ec2.remote import s3copy, spot_watch
from ec2.remote.spot_watch import NOTICE_LEAD_S
from ml.notice_fit import FIT_SHARE
from tests.peers.announced import announce, sleepers
from tests.peers.spot_watcher import watcher

REPO = Path(__file__).resolve().parents[2]


def wait_for(path: Path, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


def test_no_notice_forwards_exit_code_and_a_rebalance_alone_is_only_logged(imds, tmp_path):
    imds.mark_rebalance()  # capacity advice, not a notice: the command must run to its end
    proc = watcher(tmp_path, imds.url, steps=20, env={"STANDIN_EXIT": "3"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "step 19" in out and "saved at" not in out
    assert err.count("rebalance recommendation") == 1 and "(no action; still watching)" in err
    assert not (tmp_path / "run" / "preempted").exists() and not (tmp_path / "run" / "notice").exists()
    assert imds.served("/latest/meta-data/spot/instance-action", 404) >= 2


def test_unreachable_metadata_logs_once_and_runs_on(tmp_path):
    proc = watcher(tmp_path, "http://127.0.0.1:9", steps=30)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.count("instance metadata not reachable") == 1
    assert "step 29" in out


def test_notice_checkpoints_copies_to_s3_and_records_preempted(imds, aws_env, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ckpt-bucket")
    # A file already safe in S3 is not sent again.
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.yaml").write_text("lr: 1\n")
    s3.upload_file(str(tmp_path / "ckpt" / "config.yaml"), "ckpt-bucket", "runs/a/config.yaml")
    proc = watcher(
        tmp_path,
        imds.url,
        "--signal",
        "USR1",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--upload-to",
        "s3://ckpt-bucket/runs/a",
    )
    time.sleep(1.0)
    imds.mark_rebalance()
    wait_for(Path(str(tmp_path / "ckpt") + ".ready"))
    imds.mark_interruption()
    wait_for(tmp_path / "run" / "preempted")
    safe_after = time.time() - imds.marked_at
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "rebalance recommendation" in err and err.count("rebalance recommendation") == 1
    record = json.loads((tmp_path / "run" / "preempted").read_text())
    assert record["signal"] == "SIGUSR1" and record["command_exit_code"] == 75
    assert record["checkpoint"]["state"] == "in_s3"
    assert record["checkpoint"]["uploaded"] == ["runs/a/last.pt"] and record["checkpoint"]["skipped"] == 1
    assert json.loads((tmp_path / "run" / "notice").read_text())["action"] == "terminate"
    body = s3.get_object(Bucket="ckpt-bucket", Key="runs/a/last.pt")["Body"].read()
    assert body == (tmp_path / "ckpt" / "last.pt").read_bytes()
    # Inside the notice with room to spare (ml/notice_fit.py's share of the two minutes).
    assert safe_after < FIT_SHARE * NOTICE_LEAD_S, f"checkpoint took {safe_after:.1f} s to be safe"


def test_command_ignoring_the_signal_is_bounded_by_grace(imds, tmp_path):
    proc = watcher(
        tmp_path,
        imds.url,
        "--signal",
        "USR1",
        "--grace",
        "0.5",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        # Long enough (10 s) to outlive the notice and the grace even when the watcher starts
        # slowly on a loaded machine (60 steps, 3 s, once ran out first).
        steps=200,
        env={"STANDIN_IGNORE": "1"},
    )
    wait_for(Path(str(tmp_path / "ckpt") + ".ready"))
    imds.mark_interruption()
    wait_for(tmp_path / "run" / "preempted")
    record = json.loads((tmp_path / "run" / "preempted").read_text())
    assert record["command_exited_at"] is None and record["checkpoint"]["state"] == "local"
    assert proc.poll() is None  # the command still runs: the watcher does not kill it
    proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_bad_arguments_are_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ec2.remote.spot_watch",
            "--run-dir",
            str(tmp_path),
            "--signal",
            "NOPE",
            "--",
            "true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown signal 'NOPE'" in proc.stderr


def test_multipart_etag_is_recomputed(aws_env, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="etag-bucket")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    from boto3.s3.transfer import TransferConfig

    s3.upload_file(
        str(big),
        "etag-bucket",
        "big.bin",
        Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20),
    )
    size, etag = s3copy.remote_objects(s3, "etag-bucket", "")["big.bin"]
    assert etag.strip('"').endswith("-3")
    assert s3copy.local_etag(big, 3, 5 << 20) == etag.strip('"')
    assert s3copy.split_uri("s3://b/x/y/") == ("b", "x/y/") and s3copy.split_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        s3copy.split_uri("/tmp/x")


def test_signal_is_configurable_and_defaults_to_term(imds, tmp_path):
    proc = watcher(
        tmp_path,
        imds.url,
        "--signal",
        "TERM",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        env={"STANDIN_SIGNAL": "TERM"},
    )
    wait_for(Path(str(tmp_path / "ckpt") + ".ready"))
    imds.mark_interruption()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75 and "saved at step" in out, err
    record = json.loads((tmp_path / "run" / "preempted").read_text())
    assert record["signal"] == "SIGTERM" and record["command_exit_code"] == 75
    # Without the promised local copy destination, the record says where the checkpoint stays.
    assert record["checkpoint"]["state"] == "local"
    chosen = lambda *a: spot_watch.parse_args(["--run-dir", "r", *a, "--", "x"]).signal  # noqa: E731
    assert chosen() == signal.SIGTERM and chosen("--signal", "sigusr1") == signal.SIGUSR1
    assert chosen("--signal", "10") == signal.Signals(10)


def test_wait_after_the_signal_runs_to_the_notice_time_less_the_upload_reserve():
    from datetime import datetime, timedelta, timezone

    from ec2.remote.imds import Notice

    w = spot_watch.Watcher(spot_watch.parse_args(["--run-dir", "r", "--", "x"]), imds=object())

    def notice_in(seconds: float) -> Notice:
        at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return Notice("terminate", at.strftime("%Y-%m-%dT%H:%M:%SZ"), "{}")

    reserve = spot_watch.UPLOAD_RESERVE_S
    assert 120 - reserve - 2 <= w.deadline_wait(notice_in(120)) <= 120 - reserve + 1
    assert 60 - reserve - 2 <= w.deadline_wait(notice_in(60)) <= 60 - reserve + 1
    # Seen late (or a clock off): still a short wait, never a negative one.
    assert w.deadline_wait(notice_in(10)) == spot_watch.MIN_WAIT_S
    assert w.deadline_wait(notice_in(-30)) == spot_watch.MIN_WAIT_S
    # No usable time in the notice: AWS's two minutes.
    assert w.deadline_wait(Notice("terminate", "", "{}")) == spot_watch.NOTICE_LEAD_S - reserve
    # --grace overrides the deadline.
    graced = spot_watch.Watcher(
        spot_watch.parse_args(["--run-dir", "r", "--grace", "7", "--", "x"]), imds=object()
    )
    assert graced.deadline_wait(notice_in(120)) == 7


def test_a_rebalance_save_asks_one_rank_and_a_notice_every_rank(tmp_path):
    """SIGUSR2 (save and train on) goes to the lowest announced rank only: the ranks agree on a
    save at their next step boundary, and one signal per rank made two saves whenever one landed
    just after the others' boundary. SIGUSR1 (stop) still goes to every rank."""
    args = ["--run-dir", str(tmp_path), "--ranks", "2", "--", "x"]
    w = spot_watch.Watcher(spot_watch.parse_args(args), imds=object())
    w.announce_dir.mkdir(parents=True)
    # Two stand-in ranks that die of the signal (its default action), so who got it is plain.
    with sleepers(2) as ranks:
        for k, rank in enumerate(ranks):
            announce(w.announce_dir / f"rank-{k}.pid", rank)
        assert w.send(signal.SIGUSR2) == f"rank(s) 0:{ranks[0].pid}"
        assert ranks[0].wait(5) == -signal.SIGUSR2
        time.sleep(0.2)
        assert ranks[1].poll() is None
        assert w.send(signal.SIGUSR1) == f"rank(s) 1:{ranks[1].pid}"  # rank 0 has ended
        assert ranks[1].wait(5) == -signal.SIGUSR1


def test_a_rank_killed_without_a_word_is_not_signalled_through_a_reused_pid(tmp_path):
    """Rank 1 was killed (out of memory) and left its file; its pid is another process's now. The
    notice goes to rank 0 only, and the stranger lives on (SIGUSR1's default action kills)."""
    args = ["--run-dir", str(tmp_path), "--ranks", "2", "--", "x"]
    w = spot_watch.Watcher(spot_watch.parse_args(args), imds=object())
    w.announce_dir.mkdir(parents=True)
    with sleepers(2) as (rank, stranger):
        announce(w.announce_dir / "rank-0.pid", rank)
        announce(w.announce_dir / "rank-1.pid", stranger, pid_reused=True)  # the killed rank's file
        assert w.send(signal.SIGUSR1) == f"rank(s) 0:{rank.pid}"
        assert rank.wait(5) == -signal.SIGUSR1
        time.sleep(0.2)
        assert stranger.poll() is None
