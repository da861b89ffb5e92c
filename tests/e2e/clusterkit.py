"""What the cluster end-to-end tests share (`fab run --nodes 2` against real peers): moto's server
launches the cluster (the placement group calls, which moto lacks, answered at the botocore level
as tests/ec2/test_cluster.py documents), two sshd servers stand in for node 0 and node 1
(tests/peers/node_route.py takes SSH to the server of the instance's `spotrun:node` tag, so a
replacement for node 1 is node 1's server again), each with its own IMDS stand-in and HOME.

The members' private addresses come from a VPC whose CIDR is 127.0.0.0/16 (moto accepts it; AWS
would not): on the test machine they are loopback addresses, so torchrun's rendezvous at node 0's
private address really connects."""

from __future__ import annotations

import ctypes
import json
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import boto3
import pytest
import yaml

from common import aws
from tests.cloud.test_cluster import install_placement_groups
from tests.peers.imds import ImdsServer, instance_env
from tests.peers.moto_ec2 import DLAMI_NAME, make_image
from tests.peers.sshd import SSHD, SshdServer, require_binaries

REPO = Path(__file__).resolve().parents[2]
ROUTE = REPO / "tests" / "peers" / "node_route.py"


def write_routes(path: Path, routes: dict) -> None:
    """Whole or not at all: the router may read it at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(routes))
    tmp.replace(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_cloud(aws_env, tmp_path, monkeypatch):
    """Two nodes (sshd + IMDS each), moto with a DLAMI, a bucket and a loopback VPC, placement
    groups at the botocore level; yields (ec2 client, aws.yaml, [(sshd, imds, home)], groups)."""
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


def cluster_members(ec2) -> list[dict]:
    return [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag:spotrun:cluster", "Values": ["job"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]


def members_groups(ec2) -> list[dict]:
    return [
        g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].endswith("-job-members")
    ]


def tag(instance: dict, key: str) -> str | None:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}.get(key)


def ctrl_c(thread: threading.Thread) -> None:
    """Ctrl-C on `fab run` running in `thread`: KeyboardInterrupt raised in that thread at its next
    Python instruction, as the main thread gets it from SIGINT (the cluster fixture's placement
    groups are answered in this process, so `fab run --nodes` runs in a thread, not a subprocess)."""
    raise_in = ctypes.pythonapi.PyThreadState_SetAsyncExc
    done = raise_in(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))
    assert done == 1, f"KeyboardInterrupt reached {done} threads"


def take_back(ec2, routes_path: Path, instance_id: str, home: Path) -> None:
    """AWS takes a member back: the instance terminated in moto and its disk gone (a replacement
    starts empty). While the disk goes, no new SSH connection reaches its node (a replacement's
    sync must not start into a folder being deleted)."""
    routes = json.loads(routes_path.read_text())
    node = next(i for i in cluster_members(ec2) if i["InstanceId"] == instance_id)
    write_routes(routes_path, {k: v for k, v in routes.items() if k != tag(node, "spotrun:node")})
    ec2.terminate_instances(InstanceIds=[instance_id])
    shutil.rmtree(home / "spotrun")
    write_routes(routes_path, routes)
