"""The whole user journey through the fab tasks: launch (moto) → setup → sync → train → logs →
download → terminate, with the launched instance reached through `ssh_proxy_command` on the real
sshd fixture (the same ProxyCommand path a bastion or SSM uses)."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
from invoke import Context

from common import aws
from ec2 import registry
from ec2.remote import runs, sshconfig
from ec2.remote.ssh import Machine
from tasks import lifecycle, remote
from tests.peers.moto_ec2 import DLAMI_NAME, make_image
from tests.peers.sshd import require_binaries
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
TINY = [
    *TINY_TRAIN,
    "num_training_batches=4",
    "batches_per_val_step=4",
    "lr_decay_steps=4",
    "lr_decay_steps_day=4",
    "output_dir=trained_models/journey",
    "checkpoint_dir=trained_models/journey/checkpoint",
]


def test_launch_setup_sync_train_logs_download_terminate(sshd, aws_env, tmp_path, monkeypatch, capfd):
    require_binaries("nc")  # the ProxyCommand
    aws.reset_clients()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    make_image(ec2, DLAMI_NAME)
    monkeypatch.chdir(REPO)  # setup and sync send the current project
    sets = [
        "ssh_cidr=203.0.113.7/32",
        "ami_owners=[self]",
        "instance_types=[g5.xlarge]",
        "zones=[us-east-1a]",
        f"ssh_proxy_command=nc 127.0.0.1 {sshd.port}",
        f"ssh_user={sshd.user}",
        f"remote_dir={sshd.root / 'remote'}",
        "ssh_ready_timeout_s=20",
    ]
    c = Context()

    lifecycle.launch(c, name="journey", set_=sets)
    out = capfd.readouterr().out
    assert "SSH ready on journey" in out and "ready: `ssh spotrun-journey`" in out
    record = registry.get("journey")
    assert record.proxy_command and record.user == sshd.user and "spotrun-journey" in sshconfig.entries()
    sshd.authorize(record.key_path)  # the instance would trust the key pair launch created

    remote.setup(c, name="journey", python=str(REPO / ".venv/bin/python"), no_gpu=True, set_=sets)
    remote.sync(c, name="journey", set_=sets)
    # setup synced already; this one sends only what changed since (here: nothing, in CI).
    assert "synced to journey: " in capfd.readouterr().out
    m = Machine(record)
    code = runs.code_dir(record.remote_dir)
    m.run(
        f"cd {code} && {REPO}/.venv/bin/python scripts/make_synthetic_data.py --out data/synthetic "
        "--sessions 4 --trials 6"
    )

    remote.train(c, name="journey", train_config="configs/demo.yaml", args=" ".join(TINY), set_=sets)
    end = time.monotonic() + 120
    while (state := runs.run_state(m, "train")).state == "running" and time.monotonic() < end:
        time.sleep(1)
    capfd.readouterr()
    remote.logs(c, name="journey", no_follow=True, lines=200, set_=sets)
    log = capfd.readouterr().out
    assert str(state) == "finished(0)", log

    monkeypatch.chdir(tmp_path)
    remote.download(c, name="journey", set_=sets)
    assert (tmp_path / "outputs" / "journey" / "checkpoint" / "last.pt").exists()

    lifecycle.terminate(c, name="journey", yes=True, set_=sets)
    states = [
        i["State"]["Name"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if {"Key": "spotrun:name", "Value": "journey"} in i.get("Tags", [])
    ]
    assert states == ["terminated"]
    assert registry.load_all() == {} and sshconfig.entries() == {}
    assert not record.known_hosts.exists()
