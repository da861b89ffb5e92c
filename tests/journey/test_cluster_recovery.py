"""`fab run --nodes N` when things go wrong, against moto's server and one sshd standing in for
every member: no capacity for the replacement in the cluster's zone (injected at the client, as
every capacity test does: moto never runs out) relaunches the whole cluster elsewhere, that type
and zone excluded; an error mid-run leaves nothing running. The end-to-end run with two nodes
and a real lost node is tests/e2e/test_spot_journey.py[cluster]."""

from __future__ import annotations

import pytest

from ec2.errors import ToolkitError
from ec2.journey import history
from ec2.journey.cluster_loop import ClusterJourney
from ec2.journey.decide import ClusterVerdict
from ec2.journey.stages import Plan
from ec2.remote import startrun
from tests.peers.moto_ec2 import config
from tests.peers.placement_groups import live_members, nothing_left


def _cfg(sshd):
    return config(
        "instance_types=[g5.12xlarge]",
        "zones=[us-east-1a, us-east-1b]",
        f"ssh_proxy_command=nc 127.0.0.1 {sshd.port}",
        f"ssh_user={sshd.user}",
        "key_name=spotrun-test",
        f"import_public_key={sshd.key_path}.pub",
        f"remote_dir={sshd.root / 'remote'}",
        "ssh_ready_timeout_s=20",
    )


def _plan(**kw) -> Plan:
    return Plan(
        command="train", checkpoint_dir="s3://spot-ckpt/job/ckpt", train_config="configs/demo.yaml", **kw
    )


def test_no_capacity_for_the_replacement_relaunches_the_whole_cluster_elsewhere(
    sshd, ec2_client, placement_groups, dlami, refusing, tmp_path, capsys
):
    wrapper = refusing(lambda attempt: None)
    journey = ClusterJourney(_cfg(sshd), "job", _plan(), 2, outputs=tmp_path / "out")
    journey.fleet.launch_all()
    zone = journey.fleet.machines[0].record.zone
    other = ({"us-east-1a", "us-east-1b"} - {zone}).pop()
    old = [m.record.instance_id for m in journey.fleet.machines]
    ec2_client.terminate_instances(InstanceIds=[old[1]])  # spot takes node 1 back
    # That zone has no capacity left for a g5.12xlarge in the placement group.
    wrapper._refuse = lambda attempt: "InsufficientInstanceCapacity" if attempt[1] == zone else None
    attempt = history.Attempt(1, outcome="preempted")
    journey.h.attempts.append(attempt)

    new_nodes = journey.recover(attempt, ClusterVerdict("interrupted", (1,)))

    assert new_nodes == [0, 1]  # every node is new: all are set up again
    # The replacement was tried where the cluster was, then all nodes went elsewhere at once.
    assert [a[1] for a in wrapper.attempts] == [zone, zone, other]
    assert "terminating the survivors and launching all 2 nodes elsewhere" in capsys.readouterr().out
    live = live_members(ec2_client)
    assert len(live) == 2 and not {i["InstanceId"] for i in live} & set(old)
    assert {i["Placement"]["AvailabilityZone"] for i in live} == {other}
    assert [r["Placement.GroupName"] for r in placement_groups.run_requests[-1:]] == ["spotrun-job"]
    assert list(placement_groups.groups) == ["spotrun-job"]  # removed with the old cluster, made anew
    assert journey.fleet.exclude == {("g5.12xlarge", zone)}
    assert [(m.node, m.outcome) for m in journey.h.members] == [
        (0, "terminated"),
        (1, "lost"),
        (0, "running"),
        (1, "running"),
    ]
    assert attempt.nodes_lost == [1]
    assert any(e["event"] == "relaunch-all" for e in journey.h.events)

    journey.fleet.take_down()
    nothing_left(ec2_client, placement_groups)


def test_an_error_mid_run_terminates_every_member_and_removes_the_groups(
    sshd, ec2_client, placement_groups, dlami, tmp_path, capsys
):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    plan = _plan(setup_python="/no/such/python", require_gpu=False, local_root=str(code))
    journey = ClusterJourney(_cfg(sshd), "job", plan, 2, outputs=tmp_path / "out")
    with pytest.raises(ToolkitError, match="setup failed"):
        journey.run()
    assert journey.h.status == "failed" and journey.h.attempts[0].outcome == "failed"
    assert {m.outcome for m in journey.h.members} == {"terminated"}
    assert "removed cluster job's placement group" in capsys.readouterr().out
    nothing_left(ec2_client, placement_groups)


def test_ctrl_c_asks_and_terminates_the_whole_cluster_on_t(
    sshd, ec2_client, placement_groups, dlami, tmp_path
):
    asked = []
    journey = ClusterJourney(
        _cfg(sshd), "job", _plan(), 2, outputs=tmp_path / "out", ask=lambda q: asked.append(q) or "t"
    )
    journey.fleet.launch_all()
    ids = [m.record.instance_id for m in journey.fleet.machines]
    journey.on_ctrl_c()
    assert asked == [f"terminate {', '.join(ids)} (cluster job) now? [t]erminate / [l]eave running: "]
    assert journey.h.events[-1]["decision"] == "terminated-by-user"
    nothing_left(ec2_client, placement_groups)


def test_ctrl_c_without_a_terminal_leaves_the_cluster_and_says_how_to_stop_it(
    sshd, ec2_client, placement_groups, dlami, tmp_path, capsys
):
    journey = ClusterJourney(_cfg(sshd), "job", _plan(), 2, outputs=tmp_path / "out", ask=None)
    journey.fleet.launch_all()
    ids = [m.record.instance_id for m in journey.fleet.machines]
    journey.on_ctrl_c()
    out = capsys.readouterr().out
    assert f"left {', '.join(ids)} running" in out and "`fab terminate --name job`" in out
    assert sorted(i["InstanceId"] for i in live_members(ec2_client)) == sorted(ids)
    assert {m.outcome for m in journey.h.members} == {"left-running"}
    # What it says works: `fab terminate --name job` takes the cluster and its groups away.
    from invoke import Context

    from tasks import lifecycle

    lifecycle.terminate(
        Context(),
        name="job",
        yes=True,
        set_=["ssh_cidr=203.0.113.7/32", f"ssh_proxy_command=nc 127.0.0.1 {sshd.port}"],
    )
    nothing_left(ec2_client, placement_groups)


def test_fab_run_nodes_without_s3_checkpoints_is_one_line_and_launches_nothing(
    sshd, ec2_client, dlami, capsys, monkeypatch
):
    from pathlib import Path

    from invoke import Context
    from invoke.exceptions import Exit

    from tasks import managed

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    sets = ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]"]
    # configs/demo.yaml keeps its checkpoints on the instance's disk.
    with pytest.raises(Exit) as e:
        managed.run(Context(), name="job", nodes=2, train_config="configs/demo.yaml", set_=sets)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: a multi-node run keeps its checkpoints in S3")
    assert "checkpoint_dir=s3://BUCKET/PREFIX" in err
    with pytest.raises(Exit):
        managed.run(Context(), name="job", nodes=2, detach=True, train_config="configs/demo.yaml", set_=sets)
    # --detach --nodes N (ec2/journey/detach_nodes.py) refuses the same way, before any AWS call.
    err = capsys.readouterr().err
    assert err.startswith("error: a detached run keeps its checkpoints in S3") and err.count("\n") == 1, err
    assert live_members(ec2_client) == []


def test_an_error_while_the_nodes_train_leaves_them_training_and_names_them(
    sshd, ec2_client, placement_groups, dlami, tmp_path, capsys
):
    # The laptop lost sight of the run (AWS or SSH failing from here): the nodes train on and
    # checkpoint to S3, so they are left running, named, with the commands to follow and end them.
    journey = ClusterJourney(_cfg(sshd), "job", _plan(), 2, outputs=tmp_path / "out")
    journey.fleet.launch_all()
    ids = [m.record.instance_id for m in journey.fleet.machines]
    journey.watching = True
    journey.release()
    out = capsys.readouterr().out
    assert f"left {', '.join(ids)} running" in out and "`fab terminate --name job`" in out
    assert sorted(i["InstanceId"] for i in live_members(ec2_client)) == sorted(ids)
    assert journey.h.events[-1]["event"] == "left-running"
    assert {m.outcome for m in journey.h.members} == {"left-running"}


def test_a_node_that_vanishes_without_notice_stops_the_survivors_run_after_the_wait(
    sshd, ec2_client, placement_groups, dlami, tmp_path, capsys
):
    # No notice: AWS just lists node 1 terminated. Node 0's run would wait in its collectives for
    # the lost rank; after unreachable_s the loop stops it, and the attempt ends interrupted.
    from ec2.remote import runs

    plan = _plan(poll_s=0.2, unreachable_s=1.0)
    journey = ClusterJourney(_cfg(sshd), "job", plan, 2, outputs=tmp_path / "out")
    journey.fleet.launch_all()
    node0, node1 = journey.fleet.machines
    sshd.authorize(node0.record.key_path)
    startrun.start(
        startrun.Ssh(node0), node0.record.remote_dir, startrun.RunSpec("train", "sleep 300", watch=False)
    )  # the survivor's run, stuck
    ec2_client.terminate_instances(InstanceIds=[node1.record.instance_id])
    attempt = history.Attempt(1)
    journey.h.attempts.append(attempt)

    verdict = journey.watch(attempt)

    assert (verdict.end, verdict.lost) == ("interrupted", (1,))
    assert "node 0 still running 1 s after; stopping its run" in capsys.readouterr().out
    assert runs.run_state(node0).state == "none"  # its tmux session is gone
    assert attempt.notice_seen_at is None  # lost, not preempted: nothing to time from
