"""A spot notice on a real run: the trainer in tmux on the sshd host (`fab train`, so wrapped in the
watcher), checkpoints in moto's S3, the loopback IMDS marks the instance → the checkpoint is in S3
within seconds and the run state says preempted."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import boto3
import torch
from invoke import Context

from ec2.remote import runs
from ec2.remote.spot_watch import NOTICE_LEAD_S
from ec2.remote.ssh import Machine
from ml.notice_fit import FIT_SHARE
from tasks import remote as t
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]


def test_notice_puts_checkpoint_in_s3_and_run_state_says_preempted(
    spot_host, imds, tiny_dataset, monkeypatch, capfd
):
    monkeypatch.chdir(REPO)  # `fab setup` syncs the current project
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="spot-ckpt")
    m = Machine(spot_host.record(name="box"))
    c = Context()
    t.setup(c, name="box", python=str(REPO / ".venv/bin/python"), no_gpu=True)
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=5000",
        "output_dir=trained_models/pre",
        "checkpoint_dir=s3://spot-ckpt/box/checkpoint",
    ]
    t.train(c, name="box", train_config="configs/demo.yaml", args=" ".join(args))
    log = Path(runs.run_dir(m.record.remote_dir, "train")) / "log"
    wait_until(lambda: log.exists() and "Train batch 3:" in log.read_text(), 60, "training to start")
    assert str(runs.run_state(m, "train")) == "running"

    imds.mark_interruption()
    preempted = Path(runs.run_dir(m.record.remote_dir, "train")) / "preempted"
    wait_until(preempted.exists, 30, "the preempted record")
    seconds = time.time() - imds.marked_at
    capfd.readouterr()

    assert str(runs.run_state(m, "train")) == "preempted"
    record = json.loads(preempted.read_text())
    assert record["command_exit_code"] == 75 and record["signal"] == "SIGUSR1"
    assert {k: record["checkpoint"][k] for k in ("state", "uri", "newest_in_s3")} == {
        "state": "in_s3",
        "uri": "s3://spot-ckpt/box/checkpoint",
        "newest_in_s3": True,  # the copy made after the signal, not an older one
    }
    stopped = re.search(r"stopped by \S+ at step (\d+)", log.read_text())
    assert stopped, log.read_text()[-2000:]
    body = s3.get_object(Bucket="spot-ckpt", Key="box/checkpoint/last.pt")["Body"].read()
    ckpt = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    assert ckpt["step"] == int(stopped.group(1))
    # Inside the notice with room to spare: the share of the two minutes ml/notice_fit.py holds a
    # save to (a loaded CI box took 19 s for this tiny model; AWS takes the instance at 120 s).
    assert seconds < FIT_SHARE * NOTICE_LEAD_S, f"notice to checkpoint in S3 took {seconds:.1f} s"
    # The pane finished too: exit code 75 is written, and preempted still wins in the state.
    wait_until(lambda: (preempted.parent / "exit_code").exists(), 10, "the exit code")
    assert (preempted.parent / "exit_code").read_text().strip() == "75"
