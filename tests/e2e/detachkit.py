"""What the detached-run end-to-end tests share: moto with a DLAMI and a bucket, an aws.yaml whose
instances all lead to the sshd host, and `Instance`, which plays one instance of the group: what
its user data does (the bundle from S3 into an empty REMOTE_DIR/code) and its boot, from that
bundle, with the instance's identity in the IMDS stand-in."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3

from common.s3uri import split_s3
from ec2.config import load_aws_config
from ec2.remote import detached
from tests.peers.imds import instance_env

REPO = Path(__file__).resolve().parents[2]
CKPT = "s3://spot-ckpt/dj/checkpoint"


class Instance:
    """One instance of the group, as its cloud-init and boot would run it (see the module doc)."""

    def __init__(self, spot_host, imds, state: detached.DetachedRun, instance_id: str, tmp_path: Path):
        self.remote = spot_host.root / "remote"
        # A new instance: an empty disk and no tmux server (the previous one's is this host's).
        for sock in spot_host.tmux_tmpdir.glob("tmux-*/*"):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
        shutil.rmtree(self.remote, ignore_errors=True)
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
            # What the instance's programs are: the host's stand-ins (nvidia-smi) first, as its sshd gives.
            "PATH": f"{spot_host.bin_dir}:{os.environ['PATH']}",
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


class NodeInstance:
    """One member of a detached cluster (`fab run --detach --nodes N`), as its cloud-init and
    ec2.remote.boot_nodes would run it: its own HOME (the disk: emptied for a new instance), its
    own tmux server and IMDS stand-in (identity, notices, private address), the boot from the
    bundle with `--node K`."""

    def __init__(
        self, imds, state: detached.DetachedRun, instance_id: str, node: int, home: Path, tmp_path: Path
    ):
        self.home = home
        self.tmux = home.parent / f"tmux-{node}"
        self.tmux.mkdir(exist_ok=True)
        for sock in self.tmux.glob("tmux-*/*"):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
        shutil.rmtree(home / "spotrun", ignore_errors=True)
        code = home / "spotrun" / "code"
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
            "HOME": str(home),
            "TMUX_TMPDIR": str(self.tmux),
        }
        self.boot = subprocess.Popen(
            [sys.executable, "-m", "ec2.remote.boot_nodes", "--node", str(node), "--root", state.root]
            + ["--shutdown", str(stand_in), "--poll", "0.2"],
            cwd=code,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log = home / "spotrun" / "runs" / "train" / "log"

    def wait(self, timeout: float) -> str:
        try:
            out, _ = self.boot.communicate(timeout=timeout)
        finally:
            self.boot.kill()
        assert self.boot.returncode == 0, out
        return out

    def stop(self) -> None:
        """The machine goes away: its boot and its tmux server (the trainer in it) with it."""
        self.boot.kill()
        for sock in self.tmux.glob("tmux-*/*"):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)


def group(autoscaling, name: str = "dj") -> dict:
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[f"spotrun-{name}"])[
        "AutoScalingGroups"
    ][0]


def live(ec2) -> list[str]:
    return [
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]


def load_cfg(config: Path):
    return load_aws_config(str(config))
