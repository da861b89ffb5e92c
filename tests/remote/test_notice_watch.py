"""The notice watcher and the real trainer: a rebalance recommendation with `--on-rebalance
checkpoint` (the IMDS stand-in serves it) has `python -m ml.train` save at once and train on;
without the option nothing is saved. Also: the watcher tells a spot trainer the notice's length
(for the fits-the-notice check), and `preempted` says whether the newest last.pt reached S3."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from common import aws
from ec2.remote import spot_watch
from ml import checkpoint
from ml.errors import STOPPED_RESUMABLE
from tests.peers.imds import wait_until
from tests.peers.trainkit import env, make_data, tiny, train_cmd

REPO = Path(__file__).resolve().parents[2]


def start_watched_trainer(
    tmp_path: Path, imds_url: str, *watch_args: str, ranks: int = 0
) -> tuple[subprocess.Popen, Path]:
    """The watcher around `python -m ml.train` (with `ranks`: torchrun with that many ranks, gloo
    on the CPU, as `fab train` starts it on a machine with that many GPUs)."""
    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    args = tiny(data, run, 100_000, "batches_per_val_step=1000000", "batches_per_save=1000000")
    trainer = train_cmd(*args)  # [python, -m, ml.train, ...]
    if ranks:
        watch_args = (*watch_args, "--ranks", str(ranks))
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        trainer = [trainer[0], *launcher, *trainer[1:]]  # torchrun's own -m runs ml.train
    argv = [
        sys.executable,
        "-m",
        "ec2.remote.spot_watch",
        "--run-dir",
        str(tmp_path / "watch"),
        "--poll",
        "0.2",
        "--signal",
        "USR1",
        "--checkpoint-dir",
        str(run / "checkpoint"),
        *watch_args,
        "--",
        *trainer,
    ]
    err = tmp_path / "watcher.err"
    with open(tmp_path / "trainer.out", "w") as out, open(err, "w") as errf:
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=out, stderr=errf, env={**env(), "SPOTRUN_IMDS_URL": imds_url}
        )
    return proc, run


def trained_to(run: Path) -> int:
    """The last step in the trainer's log (it logs every 5 steps)."""
    log = run / "training_log"
    steps = re.findall(r"Train batch (\d+):", log.read_text()) if log.exists() else []
    return int(steps[-1]) if steps else -1


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # `fab stop`: passed on, the trainer saves and exits 75
    try:
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("ranks", [0, 2], ids=["one-process", "torchrun-2-ranks"])
def test_rebalance_with_checkpoint_saves_at_once_and_trains_on(imds, tmp_path, ranks):
    proc, run = start_watched_trainer(tmp_path, imds.url, "--on-rebalance", "checkpoint", ranks=ranks)
    try:
        wait_until(lambda: trained_to(run) >= 10, 180, "the trainer to train 10 steps")
        imds.mark_rebalance()
        log = run / "training_log"
        said = wait_until(
            lambda: re.search(r"saved last\.pt at step (\d+) in (.*); training goes on", log.read_text()),
            60,
            "the trainer's save after the rebalance recommendation",
        )
        # Read before anything else writes last.pt (no periodic save in this run; the next is the stop's).
        step = int(said.group(1))
        saved = checkpoint.load(run / "checkpoint" / "last.pt")
        assert saved["step"] == step and step >= 10
        assert len(saved["rng"]) == max(ranks, 1)  # every rank took part in the one save
        wait_until(lambda: trained_to(run) >= step + 10, 120, "training to go on after the save")
        assert proc.poll() is None
    finally:
        code = stop(proc)
    assert code == STOPPED_RESUMABLE
    err = (tmp_path / "watcher.err").read_text()
    assert "rebalance recommendation: " in err and "(on_rebalance: checkpoint)" in err
    sent = re.search(
        r"sent SIGUSR2 to rank\(s\) ([\d:, ]+): the trainer saves a checkpoint at its next step", err
    )
    assert sent and len(sent.group(1).split(", ")) == 1, err[-2000:]  # one rank asks for them all
    text = log.read_text()
    assert text.count("save asked for (SIGUSR2: the spot watcher's rebalance recommendation)") == 1


def test_rebalance_without_the_option_saves_nothing(imds, tmp_path):
    proc, run = start_watched_trainer(tmp_path, imds.url)
    try:
        wait_until(lambda: trained_to(run) >= 10, 180, "the trainer to train 10 steps")
        imds.mark_rebalance()
        err = tmp_path / "watcher.err"
        wait_until(lambda: "(no action; still watching)" in err.read_text(), 60, "the watcher to see it")
        seen_at = trained_to(run)
        wait_until(lambda: trained_to(run) >= seen_at + 20, 120, "training to go on")
        assert not (run / "checkpoint" / "last.pt").exists()  # no save since the recommendation
    finally:
        code = stop(proc)
    assert code == STOPPED_RESUMABLE
    assert "SIGUSR2" not in (tmp_path / "watcher.err").read_text()
    assert "save asked for" not in (run / "training_log").read_text()


PRINT_NOTICE = "import os; print('notice:', os.environ.get('SPOTRUN_NOTICE_S'))"


def test_a_spot_instance_tells_the_trainer_the_notice_length(imds, tmp_path):
    def notice_seen(lifecycle: str | None, url: str) -> str:
        if lifecycle:
            imds.lifecycle = lifecycle
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ec2.remote.spot_watch",
                "--run-dir",
                str(tmp_path / lifecycle if lifecycle else tmp_path / "x"),
                "--",
                sys.executable,
                "-c",
                PRINT_NOTICE,
            ],
            cwd=REPO,
            env={**env(), "SPOTRUN_IMDS_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert notice_seen("spot", imds.url) == "notice: 120"
    assert notice_seen("on-demand", imds.url) == "notice: None"
    assert notice_seen(None, "http://127.0.0.1:9") == "notice: None"  # not on EC2: no check


def test_preempted_records_whether_the_newest_last_pt_reached_s3(aws_env, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="newest-bucket")
    s3.put_object(Bucket="newest-bucket", Key="runs/a/last.pt", Body=b"step 7")
    uploaded = time.time()
    w = spot_watch.Watcher(
        spot_watch.parse_args(
            ["--run-dir", str(tmp_path), "--checkpoint-dir", "s3://newest-bucket/runs/a", "--", "x"]
        ),
        imds=object(),
    )
    aws.reset_clients()  # a client cached by an earlier test may point elsewhere
    # Written after the signal: the notice's checkpoint (even if the trainer had not exited yet).
    after = w.secure_checkpoint(signalled=uploaded - 5, exit_code=None)
    assert after["state"] == "in_s3" and after["newest_in_s3"] is True
    # Only an older last.pt, and the trainer still running at the deadline: the newest is not there.
    before = w.secure_checkpoint(signalled=uploaded + 60, exit_code=None)
    assert before["newest_in_s3"] is False
    assert before["why"] == "the trainer had not finished its upload by the deadline"
    # Exit 75 comes only after the trainer's own upload finished.
    assert w.secure_checkpoint(signalled=uploaded + 60, exit_code=75)["newest_in_s3"] is True
    # The trainer keeps less back for the watcher when it uploads itself.
    assert w.reserve_s() == spot_watch.LIST_RESERVE_S < spot_watch.UPLOAD_RESERVE_S


def test_on_rebalance_is_opt_in_checked_and_reaches_the_watchers_command_line():
    from common.errors import ConfigError
    from ec2.config import load_aws_config
    from ec2.journey.stages import Plan, watcher_args
    from ec2.remote import startrun, trainrun
    from ec2.remote.startrun import RunSpec

    assert load_aws_config("configs/aws.yaml").on_rebalance == "none"
    assert "--on-rebalance" not in trainrun.watcher_args("USR1", "ckpt", None)
    cfg = load_aws_config("configs/aws.yaml", ["on_rebalance=checkpoint"])
    plan = Plan(command="x", checkpoint_dir="ckpt", on_rebalance=cfg.on_rebalance)
    args = watcher_args(plan, None)
    assert args[args.index("--on-rebalance") + 1] == "checkpoint"
    # The start line on a machine with two GPUs: the plan's arguments, then that machine's --ranks.
    start = startrun.line(
        RunSpec("exp", train_config="configs/demo.yaml", watcher_args=tuple(args)), "~/r", 2
    )
    watcher = start.split("-m ec2.remote.spot_watch ", 1)[1].split(" -- ", 1)[0].split()
    parsed = spot_watch.parse_args(watcher + ["--", "x"])
    assert parsed.on_rebalance == "checkpoint" and parsed.ranks == 2
    with pytest.raises(ConfigError) as e:
        load_aws_config("configs/aws.yaml", ["on_rebalance=save"])
    assert "on_rebalance" in str(e.value) and "\n" not in str(e.value)
