"""`fab run --detach` end to end against real peers: moto's server (EC2, S3, Auto Scaling), the sshd
fixture standing in for every instance the group launches (ssh_proxy_command: nc to its port),
the loopback IMDS, the real trainer in tmux under the notice watcher.

The test plays AWS and each instance's cloud-init: when the group has an instance, it does what
the user data does (fetch the bundle from S3, unpack it into an empty REMOTE_DIR/code) and starts
the boot from that bundle with the instance's identity in IMDS. The laptop's `fab run --detach`
has returned by then; nothing of the laptop takes part until `fab watch`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
import yaml
from invoke import Context

from common import aws
from common.s3uri import split_s3
from ec2.journey import detach
from ec2.remote import detached
from tasks import detached as detached_tasks
from tasks import lifecycle, managed
from tests.ec2.conftest import DLAMI_NAME, make_image
from tests.ml.trainkit import TINY_TRAIN
from tests.peers.imds import instance_env, wait_until

REPO = Path(__file__).resolve().parents[2]
CKPT = "s3://spot-ckpt/dj/checkpoint"


@pytest.fixture
def cloud(spot_host, imds, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the code the bundle takes
    aws.reset_clients()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    make_image(ec2, DLAMI_NAME)
    boto3.client("s3").create_bucket(Bucket="spot-ckpt")
    cfg = {
        "region": "us-east-1",
        "instance_types": ["g4dn.xlarge", "g5.xlarge"],
        "zones": ["us-east-1a"],
        "ami_owners": ["self"],
        "ssh_cidr": "203.0.113.7/32",
        "ssh_user": spot_host.user,
        "ssh_proxy_command": f"nc 127.0.0.1 {spot_host.port}",
        "key_name": "spotrun-test",
        "import_public_key": f"{spot_host.key_path}.pub",
        "remote_dir": str(spot_host.root / "remote"),
        "running_timeout_s": 60,
    }
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield ec2, path
    aws.reset_clients()


class Instance:
    """One instance of the group, as its cloud-init and boot would run it (see the module doc)."""

    def __init__(self, spot_host, imds, state: detached.DetachedRun, instance_id: str, tmp_path: Path):
        self.remote = spot_host.root / "remote"
        shutil.rmtree(self.remote, ignore_errors=True)  # a new instance's disk is empty
        code = self.remote / "code"
        code.mkdir(parents=True)
        bucket, key = split_s3(state.bundle_uri)
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        tarfile.open(fileobj=io.BytesIO(body)).extractall(code, filter="data")
        imds.instance_id = instance_id
        stand_in = tmp_path / "shutdown"
        stand_in.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/shutdown.log\n')
        stand_in.chmod(0o755)
        env = {
            **os.environ,
            **instance_env(imds.url, os.environ["AWS_ENDPOINT_URL"]),
            "TMUX_TMPDIR": str(spot_host.tmux_tmpdir),
        }
        self.boot = subprocess.Popen(
            [sys.executable, "-m", "ec2.remote.boot", "--root", state.root, "--shutdown", str(stand_in)]
            + ["--poll", "0.2"],
            cwd=code,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log = self.remote / "runs" / "train" / "log"

    def wait(self, timeout: float) -> str:
        try:
            out, _ = self.boot.communicate(timeout=timeout)
        finally:
            self.boot.kill()
        assert self.boot.returncode == 0, out
        return out


def group(autoscaling) -> dict:
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["spotrun-dj"])[
        "AutoScalingGroups"
    ][0]


def live(ec2) -> list[str]:
    return [
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]


def test_detached_run_survives_an_interruption_with_no_laptop(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capsys
):
    ec2, config = cloud
    autoscaling = boto3.client("autoscaling")
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=60",
        "output_dir=trained_models/dj",
        f"checkpoint_dir={CKPT}",
    ]
    # Submit; the laptop's process returns once the group has its first instance.
    managed.run(
        Context(),
        name="dj",
        config=str(config),
        train_config="configs/demo.yaml",
        args=" ".join(args),
        imds_poll=0.2,
        no_gpu=True,
        setup_python=str(REPO / ".venv/bin/python"),
        detach=True,
    )
    out = capsys.readouterr().out
    assert "fab watch --name dj" in out
    [first] = [i["InstanceId"] for i in group(autoscaling)["Instances"]]
    state = detached.load(boto3.client("s3"), detached.root_for(CKPT, "dj"))

    # Attempt 1 boots, trains, and gets a spot notice.
    one = Instance(spot_host, imds, state, first, tmp_path)
    wait_until(
        lambda: one.log.exists() and "Train batch 3:" in one.log.read_text(), 120, "attempt 1 to train"
    )
    # `fab watch` meanwhile: state, attempt, current instance (found by tag) and its log over SSH.
    d = detach.Detached(detach_cfg(config), "dj")
    detach.watch(d, out=print, once=True)
    seen = capsys.readouterr().out
    assert f"[dj] running | attempt 1 of 4 | instance {first}" in seen
    assert "  | " in seen and "Train batch" in seen
    imds.mark_interruption()
    boot_out = one.wait(90)
    stopped = int(re.search(r"stopped by \S+ at step (\d+)", one.log.read_text()).group(1))
    assert detached.load(d.s3, d.root()).status == "interrupted", boot_out
    assert group(autoscaling)["DesiredCapacity"] == 1  # left alone for AWS to replace

    # AWS takes the instance back; the group launches another, whose boot resumes from S3.
    imds.clear()
    ec2.terminate_instances(InstanceIds=[first])
    second = wait_until(
        lambda: [i["InstanceId"] for i in group(autoscaling)["Instances"] if i["InstanceId"] != first],
        30,
        "a replacement",
    )[0]
    two = Instance(spot_host, imds, state, second, tmp_path)
    boot_out = two.wait(180)
    log = two.log.read_text()
    assert f"at step {stopped}" in log and "resumed from" in log, boot_out

    # The watcher (a new laptop process) prints the summary; the group is left with nothing.
    detached_tasks.watch(Context(), name="dj", poll=0.2, config=str(config))
    seen = capsys.readouterr().out
    assert "run dj: finished after 2 attempts on 2 instances" in seen, seen
    assert "preempted" in seen and "1 interruption" in seen
    final = detached.load(d.s3, d.root())
    assert [(a.instance_id, a.outcome) for a in final.attempts] == [
        (first, "preempted"),
        (second, "finished"),
    ]
    assert group(autoscaling)["DesiredCapacity"] == 0
    assert live(ec2) == []
    # `fab terminate` removes the group and its template: nothing of the run is left in AWS.
    lifecycle.terminate(Context(), name="dj", yes=True, config=str(config))
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


def detach_cfg(config: Path):
    from ec2.config import load_aws_config

    return load_aws_config(str(config))
