"""`fab run --nodes 2` re-entry against real peers (moto, two sshd nodes, the real trainer under
torchrun with gloo): the laptop leaves mid-run (Ctrl-C with no terminal: the members are left
running), `fab run --nodes 2 --name job` again picks the running attempt up on the same members and
watches it to the end: no new instance, one run history and one summary across both laptop
sessions. On the way, the commands that do not match the run left open are refused in one line
and launch nothing. And a member AWS takes back while the laptop is away is replaced on pick-up,
the survivor kept."""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.clusterkit import cluster_members, ctrl_c, free_port, tag, take_back
from tests.e2e.runkit import start_fab_run
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_fab_run_nodes_again_picks_up_the_cluster_run_the_laptop_left(
    cluster_cloud, tiny_dataset, tmp_path, capfd
):
    ec2, config, nodes, _groups = cluster_cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=20",
        "output_dir=trained_models/cr",
        "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
    ]
    port = free_port()
    rdirs = [home / "spotrun" / "runs" / "train" for _, _, home in nodes]

    def logs() -> str:
        return "".join((r / "log").read_text() for r in rdirs if (r / "log").exists())

    # The first laptop session: the cluster launched, torchrun started, then Ctrl-C → leave.
    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=port)

    def training() -> bool:
        if result or not thread.is_alive():
            pytest.fail(f"fab run ended early: {result}\n{capfd.readouterr().out[-4000:]}")
        return "Train batch 3:" in logs()

    wait_until(training, 120, "training on both nodes")
    ctrl_c(thread)
    thread.join(timeout=60)
    first = capfd.readouterr().out
    assert not thread.is_alive(), first[-3000:]
    ids = sorted(i["InstanceId"] for i in cluster_members(ec2))
    assert len(ids) == 2 and "running (the run goes on in tmux on every node)" in first
    assert all(i in first.split("left ")[-1] for i in ids)
    assert "`fab run --nodes 2 --name job` again picks it up" in first  # says how to come back
    left = json.loads((dest / "run.json").read_text())
    assert left["status"] == "interrupted" and [a["outcome"] for a in left["attempts"]] == ["running"]
    assert {m["outcome"] for m in left["members"]} == {"left-running"}

    # Commands that do not match the run left open: one line, nothing launched.
    for kw, line in (
        ({"nodes": 3}, "run job is still open on 2 nodes"),
        ({}, "run job is still open on 2 nodes"),
    ):
        thread, result = start_fab_run(config, dest, args, rdzv_port=port, **kw)
        thread.join(timeout=60)
        out = capfd.readouterr()
        assert result.get("exit") == 2, (result, out.out[-2000:])  # ConfigError: a usage problem
        assert line in out.err and "`fab run --nodes 2 --name job` picks it up" in out.err
        assert "Traceback" not in out.err
    wrong = [a for a in args if not a.startswith("num_training_batches")] + ["num_training_batches=21"]
    thread, result = start_fab_run(config, dest, wrong, nodes=2, rdzv_port=port)
    thread.join(timeout=60)
    out = capfd.readouterr()
    assert result.get("exit") == 2
    assert "it has num_training_batches=20 where this one has num_training_batches=21" in out.err
    assert sorted(i["InstanceId"] for i in cluster_members(ec2)) == ids

    # The second session: the same command picks the attempt up on the same members.
    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=port)
    thread.join(timeout=180)
    out = capfd.readouterr().out
    assert not thread.is_alive() and result == {}, (result, out[-3000:])
    assert "picking up run job: attempt 1 on 2 nodes (job-0 " in out and "already exists" not in out
    assert "launching" not in out
    assert sorted(i["InstanceId"] for i in cluster_members(ec2)) == ids  # no new instance
    assert {i["State"]["Name"] for i in cluster_members(ec2)} == {"terminated"}
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "finished" and [a["outcome"] for a in history["attempts"]] == ["finished"]
    kinds = [e["event"] for e in history["events"]]
    assert kinds.index("begin") < kinds.index("ctrl-c") < kinds.index("picked-up") < kinds.index("finished")
    assert [(m["node"], m["outcome"]) for m in history["members"]] == [(0, "terminated"), (1, "terminated")]
    # Torchrun went on while the laptop was away: one start, never resumed, 20 steps.
    assert "resumed from" not in logs()
    assert [(r / "exit_code").read_text().strip() for r in rdirs] == ["0", "0"]
    # One summary over both sessions: the members' whole lives, launched in the first.
    assert out.count("run job: finished after 1 attempt on 2 nodes x CPU per node (2 instances)") == 1
    assert history["started_at"] == left["started_at"] and history["total_cost_usd"] is not None


def test_a_member_taken_back_while_the_laptop_was_away_is_replaced_on_pick_up(
    cluster_cloud, tiny_dataset, tmp_path, capfd
):
    ec2, config, nodes, _groups = cluster_cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=16",
        "output_dir=trained_models/cr",
        "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
    ]
    port = free_port()
    rdirs = [home / "spotrun" / "runs" / "train" for _, _, home in nodes]

    def logs() -> str:
        return "".join((r / "log").read_text() for r in rdirs if (r / "log").exists())

    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=port)

    def training() -> bool:
        if result or not thread.is_alive():
            pytest.fail(f"fab run ended early: {result}\n{capfd.readouterr().out[-4000:]}")
        return "Train batch 3:" in logs()

    wait_until(training, 120, "training on both nodes")
    ctrl_c(thread)
    thread.join(timeout=60)
    assert not thread.is_alive()
    first = {tag(i, "spotrun:node"): i["InstanceId"] for i in cluster_members(ec2)}

    # While the laptop is away, AWS takes node 1 back: its notice stops every rank at one step
    # (rank 0 saves to S3, both exit 75), then the instance and its disk go.
    nodes[1][1].mark_interruption()
    wait_until(lambda: (rdirs[1] / "preempted").exists(), 60, "node 1's preempted record")
    nodes[1][1].clear()  # the replacement has no notice
    for rdir in rdirs:
        wait_until(lambda rdir=rdir: (rdir / "exit_code").exists(), 60, "both nodes' runs to end")
    stopped = int(re.search(r"stopped by \S+ at step (\d+)", logs()).group(1))
    take_back(ec2, config.parent / "routes.json", first["1"], nodes[1][2])
    capfd.readouterr()

    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=port)
    thread.join(timeout=240)
    out = capfd.readouterr().out
    assert not thread.is_alive() and result == {}, (result, out[-3000:])
    assert f"job-1 {first['1']} is gone (taken back while the laptop was away)" in out
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "finished" and len(history["attempts"]) == 2, out[-3000:]
    a1, a2 = history["attempts"]
    # The laptop saw no notice (node 1 was gone when it looked): lost, not preempted.
    assert (a1["outcome"], a1["nodes_lost"], a2["outcome"]) == ("lost", [1], "finished")
    assert a2["resumed_step"] == stopped and history["steps_lost"] == [0]
    # Only node 1 replaced: node 0 is the same instance, one new one for node 1.
    members = {i["InstanceId"]: tag(i, "spotrun:node") for i in cluster_members(ec2)}
    (new,) = [iid for iid in members if iid not in first.values()]
    assert members[new] == "1"
    assert [(m["node"], m["instance_id"]) for m in history["members"]] == [
        (0, first["0"]),
        (1, first["1"]),
        (1, new),
    ]
    assert {i["State"]["Name"] for i in cluster_members(ec2)} == {"terminated"}
    assert "run job: finished after 2 attempts on 2 nodes x CPU per node (3 instances)" in out
