"""A spot notice on a run with one process per GPU: `fab train` on an sshd host whose stand-in
`nvidia-smi -L` lists two GPUs, so it starts torchrun with two ranks (CPU and gloo here: no GPU on
this machine; the stand-in prints nvidia-smi's documented `-L` lines and nothing else). The IMDS
stand-in marks the instance → the watcher signals both ranks (not torchrun's agent), they stop at
the same step, rank 0's checkpoint lands in moto's S3 whole, and the run records exit 75 and
`preempted` exactly as a single process does, although torchrun itself exits 1."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import boto3
import pytest
import torch
from invoke import Context
from invoke.exceptions import Exit

from ec2.remote import runs
from ec2.remote.ssh import Machine
from tasks import remote as t
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]


def test_notice_stops_every_rank_at_one_step_and_records_75(
    spot_host, imds, tiny_dataset, monkeypatch, capfd
):
    monkeypatch.chdir(REPO)
    spot_host.stand_in_gpus(2)
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
    with pytest.raises(Exit):
        t.train(c, name="box", train_config="configs/demo.yaml", args=" ".join(args), gpus="3")
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        "error: --gpus 3 asked for, but the machine has 2 GPU(s) (`nvidia-smi -L`); "
        "give --gpus 2 or less, or leave it out"
    ]
    t.train(c, name="box", train_config="configs/demo.yaml", args=" ".join(args))
    assert "on 2 GPUs (torchrun)" in capfd.readouterr().out
    rdir = Path(runs.run_dir(m.record.remote_dir, "train"))
    assert "--nproc_per_node 2" in (rdir / "command").read_text()
    log = rdir / "log"
    wait_until(lambda: log.exists() and "Train batch 3:" in log.read_text(), 120, "training to start")
    # Both ranks announced themselves to the watcher (their handlers are in place).
    wait_until(lambda: len(list((rdir / "ranks").glob("rank-*.pid"))) == 2, 30, "both ranks")
    assert str(runs.run_state(m, "train")) == "running on 2 GPUs"

    imds.mark_interruption()
    preempted = rdir / "preempted"
    wait_until(preempted.exists, 60, "the preempted record")
    wait_until(lambda: (rdir / "exit_code").exists(), 30, "the exit code")
    text = log.read_text()

    record = json.loads(preempted.read_text())
    assert record["command_exit_code"] == 75 and record["signal"] == "SIGUSR1", text[-3000:]
    assert record["checkpoint"]["state"] == "in_s3"
    assert (rdir / "exit_code").read_text().strip() == "75"
    assert str(runs.run_state(m, "train")) == "preempted on 2 GPUs"
    # torchrun's own verdict was 1 (a worker exited non-zero); the ranks' 75 is what counts.
    assert "ChildFailedError" in text
    assert {p.read_text().strip() for p in (rdir / "ranks").glob("rank-*.exit")} == {"75"}
    # Every rank stopped at the same step (rank 0 prints it); the checkpoint holds that step and
    # both ranks' RNG streams (saved together, so it is whole).
    stopped = re.findall(r"stopped by \S+ at step (\d+)", text)
    assert len(stopped) == 1, text[-3000:]
    body = s3.get_object(Bucket="spot-ckpt", Key="box/checkpoint/last.pt")["Body"].read()
    ckpt = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    assert ckpt["step"] == int(stopped[0])
    assert len(ckpt["rng"]) == 2
