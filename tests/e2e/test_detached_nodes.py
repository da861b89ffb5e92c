"""`fab run --detach --nodes 2` end to end against real peers: moto's server (EC2, S3, Auto
Scaling: one group of one per node), two members played on this machine (tests/e2e/detachkit.
NodeInstance: each its own HOME as its disk, its own tmux server and IMDS stand-in whose private
address is loopback, so torchrun's c10d rendezvous at node 0's published address really
connects), the real trainer under torchrun (gloo, CPU, one process per node), checkpoints in
moto's S3. The test plays AWS: the notice on node 1 through its IMDS, node 1's instance
terminated, its group's replacement booted. The laptop has returned after the submit; it comes
back only for `fab watch` and `fab terminate`."""

from __future__ import annotations

import re
import socket

import boto3
import pytest
import yaml
from invoke import Context

from ec2.journey import detach, detach_nodes
from ec2.remote import detached
from ec2.remote import detached_members as members
from tasks import detached as detached_tasks
from tasks import lifecycle, managed
from tests.e2e.detachkit import CKPT, REPO, NodeInstance, group, live, load_cfg
from tests.peers.hold import Held
from tests.peers.imds import ImdsServer, wait_until
from tests.peers.trainkit import TINY_TRAIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ids(autoscaling, node: int) -> list[str]:
    return [i["InstanceId"] for i in group(autoscaling, f"dj-{node}")["Instances"]]


@pytest.fixture
def node_instance():
    """NodeInstance(...), each stopped at teardown: its tmux server outlives the run otherwise."""
    made: list[NodeInstance] = []

    def start(*args) -> NodeInstance:
        made.append(NodeInstance(*args))
        return made[-1]

    yield start
    for member in made:
        member.stop()


def test_detached_cluster_replaces_only_the_noticed_member_and_resumes_at_the_step(
    cloud, imds, tiny_dataset, tmp_path, capsys, node_instance
):
    ec2, config = cloud
    # Each member's disk is its own HOME: the run's folder is ~/spotrun on every node.
    cfg = yaml.safe_load(config.read_text())
    cfg["remote_dir"] = "~/spotrun"
    config.write_text(yaml.safe_dump(cfg))
    homes = [tmp_path / f"node{k}" / "home" for k in range(2)]
    for home in homes:
        home.mkdir(parents=True)
    autoscaling = boto3.client("autoscaling")
    # The hold below stops the ranks a step or two after batch 3: steps are left for the resume.
    steps = 16
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        f"num_training_batches={steps}",
        "output_dir=trained_models/dj",
        f"checkpoint_dir={CKPT}",
    ]
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
        nodes=2,
        rdzv_port=_free_port(),
    )
    out = capsys.readouterr().out
    assert "groups spotrun-dj-0, spotrun-dj-1" in out and "fab watch --name dj" in out, out
    [first0], [first1] = _ids(autoscaling, 0), _ids(autoscaling, 1)
    s3 = boto3.client("s3")
    state = detached.load(s3, detached.root_for(CKPT, "dj"))
    assert state.nodes == 2

    with ImdsServer() as imds1:
        zero = node_instance(imds, state, first0, 0, homes[0], tmp_path)
        one = node_instance(imds1, state, first1, 1, homes[1], tmp_path)

        def logs() -> str:
            return "".join(m.log.read_text() for m in (zero, one) if m.log.exists())

        wait_until(lambda: "Train batch 3:" in logs(), 180, "both members to train", every=0.02)
        # Held still until the notice has reached node 1's rank (tests/peers/hold.py): a fast
        # machine trains the whole run in about a second.
        with Held(zero.log.parent, one.log.parent) as held:
            assert "data-parallel over 2 processes" in logs()
            # `fab watch` meanwhile: the run, its attempt and node 0, found by its tags.
            detach.watch(detach_nodes.find(load_cfg(config), "dj"), out=print, once=True)
            seen = capsys.readouterr().out
            assert f"[dj] running | attempt 1 of 4 | instance {first0} | desired 2" in seen, seen

            # AWS's side: the notice on node 1 only. Every rank stops at one step, rank 0 saves to
            # S3; node 1's boot records preempted and ends; node 0's stays for the next attempt.
            imds1.mark_interruption()
            held.go_once_signalled(one.log.parent)
        boot_out = one.wait(120)
        assert "attempt 1 on node 1: trainer exited 75: preempted" in boot_out, boot_out
        stopped = int(re.search(r"stopped by \S+ at step (\d+)", logs()).group(1))
        # Node 0's boot, on the same instance, joins attempt 2 and waits there for node 1.
        wait_until(lambda: 0 in members.read(s3, state.root, 2)[0], 60, "node 0 to join attempt 2")
        record = detached.load(s3, state.root)
        assert record.status == "interrupted"
        [a1] = record.attempts
        assert (a1.outcome, a1.nodes_lost, a1.instance_ids) == ("preempted", [1], [first0, first1])
        # Only the lost member's group is AWS's to refill; neither group was stopped.
        assert (
            group(autoscaling, "dj-0")["DesiredCapacity"]
            == group(autoscaling, "dj-1")["DesiredCapacity"]
            == 1
        )

        # AWS takes node 1's instance (and its disk); its group launches a replacement, whose boot
        # joins attempt 2, where node 0 waits; both resume from the S3 checkpoint.
        imds1.clear()
        one.stop()
        ec2.terminate_instances(InstanceIds=[first1])
        second1 = wait_until(lambda: [i for i in _ids(autoscaling, 1) if i != first1], 60, "a replacement")[0]
        assert _ids(autoscaling, 0) == [first0]  # node 0 was not replaced
        one = node_instance(imds1, state, second1, 1, homes[1], tmp_path)
        boot_out = zero.wait(240)
        boot_out += one.wait(60)
        log = logs()
        assert f"at step {stopped}" in log and "resumed from" in log, boot_out

    final = detached.load(s3, state.root)
    assert final.status == "finished"
    assert [(a.outcome, a.instance_ids, a.nodes_lost) for a in final.attempts] == [
        ("preempted", [first0, first1], [1]),
        ("finished", [first0, second1], []),
    ]
    # Finished: both groups at desired 0 (the boots set them), nothing live.
    assert group(autoscaling, "dj-0")["DesiredCapacity"] == group(autoscaling, "dj-1")["DesiredCapacity"] == 0

    # `fab watch` (a new laptop process) prints the cluster's summary.
    detached_tasks.watch(Context(), name="dj", poll=0.2, config=str(config))
    seen = summary = capsys.readouterr().out
    assert "run dj: finished after 2 attempts on 2 nodes x CPU per node (3 instances)" in seen, seen
    assert f"attempt 1: preempted at step {stopped}; node 1 lost" in seen, seen
    assert f"attempt 2: resumed at step {stopped}, finished" in seen, seen
    assert "nodes lost 1, steps lost to interruptions 0" in seen, seen
    # Its ledger: the members' cost cut into the two attempts, no step recomputed.
    assert re.search(r"\n  ledger attempt 1: \$[\d.]+ on steps kept, .*, 0 recomputed steps", seen), seen
    assert "\n  ledger attempt 2: $" in seen and "\n  ledger total: $" in seen, seen

    # `fab status`: one line for the run, both member groups in it.
    lifecycle.status(Context(), no_runs=True, config=str(config))
    seen = capsys.readouterr().out
    assert (
        "detached run dj: groups spotrun-dj-0, spotrun-dj-1" in seen
        and "2 nodes, attempt 2 of 4, finished" in seen
    )
    ledger = r", finished, cost so far \$[\d.]+\n  ledger attempt 1: .*\n  ledger attempt 2: "
    assert re.search(ledger, seen), seen

    # `fab terminate` removes both groups and templates; `fab cleanup` the members' security
    # group once no member is live: nothing of the run is left in AWS.
    lifecycle.terminate(Context(), name="dj", yes=True, config=str(config))
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert live(ec2) == []
    lifecycle.cleanup(Context(), config=str(config))
    names = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert not [n for n in names if n.endswith("-dj-members")], names
    print(f"fab run --detach --nodes 2:\n{out}\nfab watch:\n{summary}\nboots:\n{boot_out}")
