"""Fixtures of the end-to-end tests that more than one module uses."""

from __future__ import annotations

import boto3
import pytest
import yaml

from common import aws
from tests.e2e.detachkit import REPO
from tests.peers.moto_ec2 import DLAMI_NAME, make_image


@pytest.fixture
def cloud(spot_host, imds, tmp_path, monkeypatch):
    """moto with a DLAMI and a bucket; an aws.yaml whose instances all lead to the sshd host.
    Yields (the EC2 client, the aws.yaml path)."""
    monkeypatch.chdir(REPO)  # the code `fab run` syncs and a detached run bundles
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
        "ssh_ready_timeout_s": 20,
        "running_timeout_s": 60,
    }
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield ec2, path
    aws.reset_clients()
