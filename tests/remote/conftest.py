"""The detached boot's machine (tests/remote/test_boot.py, test_boot_budget.py): moto with a bucket
and the run's Auto Scaling group of one (a mixed instances policy over a launch template, as
`fab run --detach` makes it), a temporary folder as the machine (its code folder is this
repository, as the bundle would unpack it), the IMDS stand-in, and a stand-in for `shutdown`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from common import aws
from ec2.remote import detached
from ec2.remote.detached import DetachedRun

REPO = Path(__file__).resolve().parents[2]
BUCKET = "spot-boot"
GROUP = "spotrun-job"


@pytest.fixture
def machine(aws_env, imds, tmp_path, monkeypatch, ready_venv):
    """moto with a bucket and a group of one (desired 1); a machine folder set up before
    (tests/peers/ready_venv.py); the boot's environment."""
    aws.reset_clients()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    # Any image id: moto launches the group's instance without looking it up.
    boto3.client("ec2").create_launch_template(
        LaunchTemplateName="spotrun-job", LaunchTemplateData={"ImageId": "ami-12345678"}
    )
    asg = boto3.client("autoscaling")
    asg.create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateName": "spotrun-job", "Version": "$Latest"},
                "Overrides": [{"InstanceType": "g5.xlarge"}, {"InstanceType": "g6.xlarge"}],
            },
            "InstancesDistribution": {
                "OnDemandAllocationStrategy": "lowest-price",
                "OnDemandBaseCapacity": 0,
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        },
        MinSize=0,
        MaxSize=1,
        DesiredCapacity=1,
        AvailabilityZones=["us-east-1a"],
    )
    remote = tmp_path / "m" / "spotrun"
    remote.mkdir(parents=True)
    (remote / "code").symlink_to(REPO)
    ready_venv(remote)
    shutdown_log = tmp_path / "shutdown.log"
    stand_in = tmp_path / "shutdown"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {shutdown_log}\n')
    stand_in.chmod(0o755)
    env = dict(os.environ, SPOTRUN_IMDS_URL=imds.url, TMUX_TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    yield Machine(tmp_path, remote, stand_in, shutdown_log, env, imds, asg)
    subprocess.run(["tmux", "kill-server"], env=env, capture_output=True)
    aws.reset_clients()


class Machine:
    def __init__(self, tmp, remote, shutdown, shutdown_log, env, imds, asg):
        self.tmp, self.remote, self.shutdown, self.shutdown_log = tmp, remote, shutdown, shutdown_log
        self.env, self.imds, self.asg = env, imds, asg
        self.root = f"s3://{BUCKET}/runs/job/checkpoint-spotrun-job"
        self.s3 = boto3.client("s3")

    def submit(self, command: str, **kw) -> DetachedRun:
        kw.setdefault("setup_python", str(REPO / ".venv/bin/python"))
        state = DetachedRun(
            name="job",
            group=GROUP,
            region="us-east-1",
            root=self.root,
            command=command,
            watcher_args=["--signal", "USR1", "--poll", "0.2"],
            remote_dir=str(self.remote),
            login_user=os.environ.get("USER") or __import__("getpass").getuser(),
            require_gpu=False,
            **kw,
        )
        detached.save(self.s3, state)
        return state

    def boot(self, *extra: str) -> subprocess.Popen:
        argv = [
            sys.executable,
            "-m",
            "ec2.remote.boot",
            "--root",
            self.root,
            "--shutdown",
            str(self.shutdown),
            *extra,
        ]
        return subprocess.Popen(
            [*argv, "--poll", "0.2"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def boot_to_end(self, timeout: float = 120) -> str:
        p = self.boot()
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out
        return out

    def state(self) -> DetachedRun:
        return detached.load(self.s3, self.root)

    def desired(self) -> int:
        return self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0][
            "DesiredCapacity"
        ]

    def shutdowns(self) -> list[str]:
        return self.shutdown_log.read_text().splitlines() if self.shutdown_log.exists() else []

    def run_dir(self) -> Path:
        return self.remote / "runs" / "train"
