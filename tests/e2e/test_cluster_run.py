"""`fab run --nodes 2` end to end against real peers: moto's server launches the cluster (the
placement group calls, which moto lacks, answered at the botocore level as tests/ec2/test_cluster.py
documents), two sshd servers stand in for node 0 and node 1 (tests/peers/node_route.py takes SSH
to the server of the instance's `spotrun:node` tag, so a replacement for node 1 is node 1's server
again), each with its own IMDS stand-in and HOME, the real trainer under torchrun (gloo, CPU, one
process per node), checkpoints in moto's S3.

The members' private addresses come from a VPC whose CIDR is 127.0.0.0/16 (moto accepts it; AWS
would not): on the test machine they are loopback addresses, so torchrun's rendezvous at node 0's
private address really connects. The test plays AWS: the notice on node 1 through its IMDS, then
node 1's instance terminated."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
import torch
import yaml

from common import aws
from tests.e2e.runkit import start_fab_run
from tests.peers.imds import ImdsServer, instance_env, wait_until
from tests.peers.moto_ec2 import DLAMI_NAME, make_image
from tests.peers.placement_groups import install_placement_groups
from tests.peers.sshd import SSHD, SshdServer, require_binaries
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
ROUTE = REPO / "tests" / "peers" / "node_route.py"


def _write_routes(path: Path, routes: dict) -> None:
    """Whole or not at all: the router may read it at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(routes))
    tmp.replace(path)


def _free_port() -> int:
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
                _write_routes(routes, {"0": node0.port, "1": node1.port})
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


def _members(ec2) -> list[dict]:
    return [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag:spotrun:cluster", "Values": ["job"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]


def _members_groups(ec2) -> list[dict]:
    return [
        g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].endswith("-job-members")
    ]


def _tag(instance: dict, key: str) -> str | None:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}.get(key)


def test_cluster_run_replaces_the_lost_node_in_its_group_resumes_at_the_step_and_cleans_up(
    cluster_cloud, tiny_dataset, tmp_path, capfd
):
    ec2, config, nodes, groups = cluster_cloud
    nodes_routes = config.parent / "routes.json"
    dest = tmp_path / "out"
    steps = 16
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        f"num_training_batches={steps}",
        "output_dir=trained_models/cl",
        "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
    ]
    began = time.monotonic()
    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=_free_port())
    rdirs = [home / "spotrun" / "runs" / "train" for _, _, home in nodes]

    def logs() -> str:
        return "".join((r / "log").read_text() for r in rdirs if (r / "log").exists())

    def events() -> list[dict]:
        path = dest / "run.json"
        return json.loads(path.read_text())["events"] if path.exists() else []

    def alive() -> None:
        if result or not thread.is_alive():
            captured = capfd.readouterr()
            pytest.fail(f"fab run ended early: {result}\n{captured.out[-4000:]}\n{captured.err[-2000:]}")

    wait_until(lambda: alive() or "Train batch 3:" in logs(), 120, "training on both nodes")
    first = {_tag(i, "spotrun:node"): i for i in _members(ec2)}
    assert len(first) == 2 and "data-parallel over 2 processes" in logs()
    (members_group,) = _members_groups(ec2)

    # AWS's side: the notice on node 1 only; its watcher stops every rank at one step, rank 0
    # saves to S3, both nodes exit 75. Then AWS takes node 1 back, and its disk with it (a
    # replacement starts empty).
    nodes[1][1].mark_interruption()
    wait_until(lambda: (rdirs[1] / "preempted").exists(), 60, "node 1's preempted record")
    nodes[1][1].clear()  # the replacement has no notice
    for rdir in rdirs:
        wait_until(lambda rdir=rdir: (rdir / "exit_code").exists(), 60, "both nodes' runs to end")
    assert [(r / "exit_code").read_text().strip() for r in rdirs] == ["75", "75"]
    stopped = int(re.search(r"stopped by \S+ at step (\d+)", logs()).group(1))
    # While node 1's disk goes, no new SSH connection reaches it (the replacement's sync must not
    # start into a folder being deleted).
    routes = json.loads(nodes_routes.read_text())
    _write_routes(nodes_routes, {"0": routes["0"]})
    ec2.terminate_instances(InstanceIds=[first["1"]["InstanceId"]])
    shutil.rmtree(nodes[1][2] / "spotrun")
    _write_routes(nodes_routes, routes)

    thread.join(timeout=180)
    wall = time.monotonic() - began
    out = capfd.readouterr().out
    assert not thread.is_alive(), out[-3000:]
    assert result == {}, (result, out[-3000:])

    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "finished" and len(history["attempts"]) == 2, out[-3000:]
    a1, a2 = history["attempts"]
    assert (a1["outcome"], a1["nodes_lost"], a2["outcome"]) == ("preempted", [1], "finished")
    # Resumed from S3 at the step the notice stopped it at: nothing lost.
    assert a2["resumed_step"] == stopped and history["steps_lost"] == [0]
    assert (
        f"resumed from s3://spot-ckpt/job/checkpoint/last.pt at step {stopped}"
        in (dest / "run" / "log").read_text()
    )
    assert 0 < a2["seconds_notice_to_resumed"] < 180
    body = boto3.client("s3").get_object(Bucket="spot-ckpt", Key="job/checkpoint/last.pt")["Body"].read()
    assert torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)["step"] == steps

    # The replacement: one new instance for node 1, same zone, in the placement group and the
    # members' group, read back from moto (the group from the request: moto keeps none).
    members = _members(ec2)
    (new,) = [i for i in members if i["InstanceId"] not in {f["InstanceId"] for f in first.values()}]
    assert _tag(new, "spotrun:node") == "1" and _tag(new, "Name") == "job-1"
    assert new["Placement"]["AvailabilityZone"] == first["0"]["Placement"]["AvailabilityZone"]
    sent = groups.run_requests[-1]
    assert (sent["MinCount"], sent["Placement.GroupName"]) == (1, "spotrun-job")
    assert members_group["GroupId"] in sent.values()  # the members-only rule reaches it
    assert [m["node"] for m in history["members"]] == [0, 1, 1]
    assert history["members"][2]["instance_id"] == new["InstanceId"]
    assert history["members"][0]["instance_id"] == first["0"]["InstanceId"]  # the survivor stayed
    # Finished: every member terminated, the placement group and the members' group removed.
    assert {i["State"]["Name"] for i in _members(ec2)} == {"terminated"}
    assert groups.groups == {} and _members_groups(ec2) == []
    # The trainer's outputs from the node rank 0 ran on (either: c10d numbers nodes in
    # rendezvous order), logs from both nodes of both attempts.
    assert f"at step {stopped}" in (dest / "training_log").read_text()
    assert (dest / "metrics.csv").exists()
    for attempt in (1, 2):
        assert (dest / "nodes" / f"attempt-{attempt}" / "node-0" / "log").exists()
    assert (dest / "nodes" / "attempt-2" / "node-1" / "log").exists()
    assert "run job: finished after 2 attempts on 2 nodes x CPU per node (3 instances)" in out
    assert "nodes lost 1, steps lost to interruptions 0, notice to resumed" in out
    assert history["total_cost_usd"] is not None
    print(
        f"fab run --nodes 2 (two sshd stand-ins, gloo on the CPU): nodes lost 1, stopped at step {stopped}, "
        f"steps lost 0, notice to resumed {a2['seconds_notice_to_resumed']} s, fab run {wall:.0f} s in all"
    )
