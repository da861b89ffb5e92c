"""`fab run --nodes 2` re-entry against real peers (moto, two sshd nodes, the real trainer under
torchrun with gloo): the laptop leaves mid-run (Ctrl-C with no terminal: the members are left
running), `fab run --nodes 2 --name job` again picks the running attempt up on the same members and
watches it to the end: no new instance, one run history and one summary across both laptop
sessions. On the way, the commands that do not match the run left open are refused in one line
and launch nothing. And a member AWS takes back while the laptop is away is replaced on pick-up,
the survivor kept.

The budget keys apply to a cluster (ec2/journey/budget.py) on the same run: the first session's
`deadline` is missed by the projection from rank 0's steps, which moves every node of the next
attempt to on-demand; the second session's `max_cost_usd` (the spot price injected as
DescribeSpotPriceHistory documents it, tests/peers/prices.py; moto prices every pool at
$0.00001/h) is reached by the members' whole lives at pick-up, so both nodes' trainers checkpoint
and stop, every member is terminated and `fab run` exits 75."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import torch

from tests.e2e.clusterkit import cluster_members, ctrl_c, free_port, tag, take_back
from tests.e2e.runkit import join_while_progressing, start_fab_run
from tests.peers import prices
from tests.peers.hold import Held
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_fab_run_nodes_again_picks_up_the_cluster_run_the_laptop_left(
    cluster_cloud, tiny_dataset, tmp_path, capfd
):
    ec2, config, nodes, _groups = cluster_cloud
    dest = tmp_path / "out"
    # Steps enough that the run is still training when the second session comes (the cap ends it).
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=1000000",
        "output_dir=trained_models/cr",
        "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
    ]
    port = free_port()
    rdirs = [home / "spotrun" / "runs" / "train" for _, _, home in nodes]
    spot: dict = {}  # the spot price answered; none (unknown) until the second session
    prices.inject(spot, {"g5.xlarge": "1.006"})  # on-demand, us-east-1, Linux

    def logs() -> str:
        return "".join((r / "log").read_text() for r in rdirs if (r / "log").exists())

    def events() -> list[str]:
        path = dest / "run.json"
        return [e["event"] for e in json.loads(path.read_text())["events"]] if path.exists() else []

    # The first laptop session: the cluster launched, torchrun started, the deadline (an hour
    # away; a million steps take longer, at more than 3.6 ms each: two gloo ranks' all-reduce
    # over TCP alone takes more) missed, then Ctrl-C → leave. 100,000 steps at two hours did not
    # miss on an idle fast machine.
    deadline = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=port, set_=[f"deadline={deadline}"])

    def training() -> bool:
        if result or not thread.is_alive():
            pytest.fail(f"fab run ended early: {result}\n{capfd.readouterr().out[-4000:]}")
        return "Train batch 3:" in logs() and "deadline-miss" in events()

    wait_until(training, 180, "training on both nodes and the deadline's projection")
    ctrl_c(thread)
    thread.join(timeout=60)
    first = capfd.readouterr().out
    assert not thread.is_alive(), first[-3000:]
    # Projected from rank 0's steps (on either node), the switch for every node of the next attempt.
    missed = re.search(
        r"projected finish .* \((\d+) steps left x ([\d.]+) s.*\) misses the deadline (.*)", first
    )
    assert missed, first[-3000:]
    assert 999_000 < int(missed.group(1)) < 1_000_000 and float(missed.group(2)) > 0
    assert missed.group(3).endswith(
        ": every node of the next attempt (2) runs on-demand at $1.006/h (g5.xlarge) each"
    )
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
    assert "it has num_training_batches=1000000 where this one has num_training_batches=21" in out.err
    assert sorted(i["InstanceId"] for i in cluster_members(ec2)) == ids

    # The second session: the same command picks the attempt up on the same members, with a cap
    # of $2 at $3600/h a node ($1 a second): the members' minutes since their launch in the first
    # session pass it, so every node's trainer is asked to checkpoint and stop.
    spot[("g5.xlarge", "us-east-1a")] = 3600.0
    thread, result = start_fab_run(config, dest, args, nodes=2, rdzv_port=port, set_=["max_cost_usd=2"])
    join_while_progressing(thread, *(r / "log" for r in rdirs), dest / "run.json")
    captured = capfd.readouterr()
    out = captured.out
    assert not thread.is_alive() and result == {"exit": 75}, (result, out[-3000:], captured.err[-2000:])
    assert "picking up run job: attempt 1 on 2 nodes (job-0 " in out and "already exists" not in out
    assert "launching" not in out
    assert "asking the trainer on every node (2) to checkpoint and stop" in out
    assert sorted(i["InstanceId"] for i in cluster_members(ec2)) == ids  # no new instance
    assert {i["State"]["Name"] for i in cluster_members(ec2)} == {"terminated"}
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "stopped" and [a["outcome"] for a in history["attempts"]] == ["stopped"]
    kinds = [e["event"] for e in history["events"]]
    assert kinds.index("begin") < kinds.index("deadline-miss") < kinds.index("ctrl-c")
    assert kinds.index("ctrl-c") < kinds.index("picked-up") < kinds.index("max-cost") < kinds.index("stopped")
    assert [(m["node"], m["outcome"]) for m in history["members"]] == [(0, "terminated"), (1, "terminated")]
    # Torchrun went on while the laptop was away: one start, never resumed; both nodes' ranks
    # stopped at one step (exit 75), rank 0's checkpoint in S3 at that step.
    assert "resumed from" not in logs()
    assert [(r / "exit_code").read_text().strip() for r in rdirs] == ["75", "75"]
    step = int(re.search(r"stopped by \S+ at step (\d+)", logs()).group(1))
    body = boto3.client("s3").get_object(Bucket="spot-ckpt", Key="job/checkpoint/last.pt")["Body"].read()
    assert torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)["step"] == step
    cost = history["total_cost_usd"]
    assert cost >= 2 and history["attempts"][0]["last_step"] == step
    err = captured.err.strip().splitlines()
    assert err[-1] == (
        f"error: cost ${cost:.2f} reached max_cost_usd $2: stopped at step {step} with a checkpoint "
        "(s3://spot-ckpt/job/checkpoint); run again with a higher max_cost_usd to go on"
    ), captured.err[-2000:]
    assert "Traceback" not in captured.err
    # One summary over both sessions: the members' whole lives, launched in the first.
    assert out.count("run job: stopped after 1 attempt on 2 nodes x CPU per node (2 instances)") == 1
    assert history["started_at"] == left["started_at"]


def test_a_member_taken_back_while_the_laptop_was_away_is_replaced_on_pick_up(
    cluster_cloud, tiny_dataset, tmp_path, capfd
):
    ec2, config, nodes, _groups = cluster_cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        # Ctrl-C and the notice come while the ranks are held after "Train batch 3"
        # (tests/peers/hold.py): the steps after it are the resume's.
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

    wait_until(training, 120, "training on both nodes", every=0.02)
    # The ranks held still (a fast machine trains the whole run in about a second) until the
    # laptop has seen a step, left, and node 1's notice has reached its rank.
    with Held(*rdirs) as held:
        shown: list[str] = []

        def laptop_saw_a_step() -> bool:
            shown.append(capfd.readouterr().out)  # its status lines: "... | step N"
            return re.search(r"\| step \d+", "".join(shown)) is not None

        wait_until(laptop_saw_a_step, 60, "the laptop to see a step")
        ctrl_c(thread)
        thread.join(timeout=60)
        assert not thread.is_alive()
        first = {tag(i, "spotrun:node"): i["InstanceId"] for i in cluster_members(ec2)}

        # While the laptop is away, AWS takes node 1 back: its notice stops every rank at one step
        # (rank 0 saves to S3, both exit 75), then the instance and its disk go.
        nodes[1][1].mark_interruption()
        held.go_once_signalled(rdirs[1])
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
