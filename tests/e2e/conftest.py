"""Fixtures of the end-to-end tests that more than one module uses, and the drivers of the three run
engines for the one spot journey (tests/e2e/test_spot_journey.py, tests/e2e/engines/)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
import yaml

from common import aws
from tests.e2e.clusterkit import write_routes
from tests.e2e.detachkit import REPO
from tests.e2e.engines.attended import Attended
from tests.e2e.engines.cluster import Cluster
from tests.e2e.engines.detached import Detached
from tests.peers.imds import ImdsServer, instance_env
from tests.peers.moto_ec2 import DLAMI_NAME, make_image
from tests.peers.placement_groups import install_placement_groups
from tests.peers.sshd import SSHD, SshdServer, require_binaries


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


ROUTE = REPO / "tests" / "peers" / "node_route.py"


@pytest.fixture
def cluster_cloud(aws_env, tmp_path, monkeypatch, ready_venv):
    """Two nodes (sshd + IMDS each), moto with a DLAMI, a bucket and a loopback VPC, placement
    groups at the botocore level; yields (ec2 client, aws.yaml, [(sshd, imds, home)], groups).
    Both nodes start set up (tests/peers/ready_venv.py); a replacement's folder is wiped."""
    require_binaries(SSHD, "ssh", "rsync", "tmux", "nc")
    monkeypatch.chdir(REPO)
    roots = [Path(tempfile.mkdtemp(prefix=f"c{k}", dir="/tmp")) for k in range(2)]
    (roots[0] / "laptop").mkdir()
    monkeypatch.setenv("HOME", str(roots[0] / "laptop"))
    monkeypatch.setenv("SPOTRUN_HOME", str(roots[0] / "s"))
    aws.reset_clients()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    make_image(ec2, DLAMI_NAME)
    boto3.client("s3").create_bucket(Bucket="spot-ckpt")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.1.0/24", AvailabilityZone="us-east-1a")
    subnet_id = subnet["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
    groups = install_placement_groups()
    homes = [root / "home" for root in roots]
    for home in homes:
        home.mkdir()
        ready_venv(home / "spotrun")
    try:
        with ImdsServer() as imds0, ImdsServer() as imds1:
            env0, env1 = instance_env(imds0.url, aws_env), instance_env(imds1.url, aws_env)
            with (
                SshdServer(roots[0], env=env0, home=homes[0]) as node0,
                SshdServer(roots[1], env=env1, home=homes[1]) as node1,
            ):
                node1.authorize(node0.key_path)  # the one key pair every member gets
                routes = tmp_path / "routes.json"
                write_routes(routes, {"0": node0.port, "1": node1.port})
                cfg = {
                    "region": "us-east-1",
                    "instance_types": ["g5.xlarge"],
                    "vpc_id": vpc,
                    "subnet_id": subnet_id,
                    "ami_owners": ["self"],
                    "ssh_cidr": "203.0.113.7/32",
                    "ssh_user": node0.user,
                    "ssh_proxy_command": f"{sys.executable} {ROUTE} {routes} %h",
                    "key_name": "spotrun-test",
                    "import_public_key": f"{node0.key_path}.pub",
                    "remote_dir": "~/spotrun",
                    "ssh_ready_timeout_s": 30,
                    "running_timeout_s": 60,
                }
                path = tmp_path / "aws.yaml"
                path.write_text(yaml.safe_dump(cfg))
                yield ec2, path, [(node0, imds0, homes[0]), (node1, imds1, homes[1])], groups
    finally:
        aws.reset_clients()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def attended_engine(cloud, spot_host, imds, tiny_dataset, tmp_path, capfd):
    yield from _letting_go(Attended(cloud, spot_host, imds, tiny_dataset, tmp_path, capfd))


@pytest.fixture
def cluster_engine(cluster_cloud, tiny_dataset, tmp_path, capfd):
    yield from _letting_go(Cluster(cluster_cloud, tiny_dataset, tmp_path, capfd))


@pytest.fixture
def detached_engine(cloud, spot_host, imds, tiny_dataset, tmp_path, capfd):
    yield from _letting_go(Detached(cloud, spot_host, imds, tiny_dataset, tmp_path, capfd))


def _letting_go(engine):
    """The engine; its held trainer let go at the end (a test failing mid-hold leaves none stopped)."""
    try:
        yield engine
    finally:
        if getattr(engine, "held", None) is not None:
            engine.held.go()
