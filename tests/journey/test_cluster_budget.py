"""The budget keys on a cluster (`fab run --nodes N`, ec2/journey/budget.py): on_demand_after moves
every node of the next attempt to on-demand (the spot survivor replaced too), max_cost_usd counts
every member's billed time at its price and asks each node's trainer to stop, the deadline's
projection expects N nodes' interruptions. Against moto's server, the placement groups answered at
the botocore level (tests/peers/placement_groups.py), sshd standing in for the members, and prices
injected as DescribeSpotPriceHistory and the Pricing API document them (tests/peers/prices.py;
moto prices every spot pool at $0.00001/h and has no Pricing API). The end-to-end stop at
max_cost_usd is tests/e2e/test_cluster_reentry.py."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common import aws
from common.attempt import Attempt
from common.errors import STOPPED_RESUMABLE
from ec2.journey import budget, history
from ec2.journey.cluster_loop import ClusterJourney
from ec2.journey.decide import ClusterVerdict
from ec2.journey.loop import Journey
from ec2.journey.stages import Plan
from ec2.remote import runs
from ec2.remote.ssh import Machine
from tests.peers import prices
from tests.peers.moto_ec2 import config
from tests.peers.placement_groups import live_members, nothing_left

PLAN = Plan(command="train", checkpoint_dir="s3://spot-ckpt/job/ckpt", train_config="configs/demo.yaml")
G5_12X = "5.672"  # us-east-1 on-demand $/h, Linux


def _cfg(sshd, *sets: str):
    return config(
        "instance_types=[g5.12xlarge]",
        "zones=[us-east-1a, us-east-1b]",
        f"ssh_proxy_command=nc 127.0.0.1 {sshd.port}",
        f"ssh_user={sshd.user}",
        "key_name=spotrun-test",
        f"import_public_key={sshd.key_path}.pub",
        f"remote_dir={sshd.root / 'remote'}",
        "ssh_ready_timeout_s=20",
        *sets,
    )


def _ago(minutes: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def test_after_on_demand_after_interruptions_every_node_of_the_next_attempt_is_on_demand(
    sshd, ec2_client, placement_groups, dlami, tmp_path, capsys
):
    prices.inject({}, {"g5.12xlarge": G5_12X})  # the on-demand $/h the switch names
    journey = ClusterJourney(_cfg(sshd, "on_demand_after=1"), "job", PLAN, 2, outputs=tmp_path / "out")
    a1 = Attempt(1)
    journey.h.attempts.append(a1)
    assert journey.strategy.launch(a1) == [0, 1] and a1.market == "spot"
    first = [m.record.instance_id for m in journey.fleet.machines]
    ec2_client.terminate_instances(InstanceIds=[first[1]])  # spot takes node 1 back
    a1.outcome = "preempted"

    journey.budget.after_interruption()
    new = journey.recover(a1, ClusterVerdict("interrupted", (1,)))

    out = capsys.readouterr().out
    assert (
        "1 interruption (on_demand_after: 1): every node of the next attempt (2) runs on-demand at "
        f"${float(G5_12X):.3f}/h (g5.12xlarge) each"
    ) in out
    assert "terminating the spot survivors and launching all 2 nodes on-demand" in out
    # Both nodes new, both on-demand: moto lists a spot instance with InstanceLifecycle "spot" and
    # an on-demand one without it; the request asked for no spot market.
    assert new == [0, 1]
    live = live_members(ec2_client)
    assert len(live) == 2 and not {i["InstanceId"] for i in live} & set(first)
    assert [i.get("InstanceLifecycle") for i in live] == [None, None]
    assert not any(k.startswith("InstanceMarketOptions") for k in placement_groups.run_requests[-1])
    assert [(m.node, m.market, m.outcome) for m in journey.h.members] == [
        (0, "spot", "terminated"),  # the survivor went too: it would interrupt the run again
        (1, "spot", "lost"),
        (0, "on-demand", "running"),
        (1, "on-demand", "running"),
    ]
    a2 = Attempt(2)
    journey.h.attempts.append(a2)
    assert journey.strategy.launch(a2) == [0, 1] and a2.market == "on-demand"

    # On-demand now, a later loss is replaced on-demand in the cluster's placement group: the
    # survivor stays (it is not interrupted).
    survivor = journey.fleet.machines[0].record.instance_id
    ec2_client.terminate_instances(InstanceIds=[journey.fleet.machines[1].record.instance_id])
    a2.outcome = "lost"
    journey.budget.after_interruption()  # already on-demand: says nothing more
    assert journey.recover(a2, ClusterVerdict("interrupted", (1,))) == [1]
    assert survivor in {i["InstanceId"] for i in live_members(ec2_client)}
    assert [i.get("InstanceLifecycle") for i in live_members(ec2_client)] == [None, None]
    assert "on_demand_after" not in capsys.readouterr().out

    journey.fleet.take_down()
    nothing_left(ec2_client, placement_groups)


def test_max_cost_counts_every_members_billed_time_and_asks_each_nodes_trainer_to_stop(
    sshd, aws_env, tmp_path, capsys
):
    prices.inject({("g5.xlarge", "us-east-1a"): 0.40}, {"g5.xlarge": "1.006"})
    journey = ClusterJourney(config("max_cost_usd=2"), "job", PLAN, 2, outputs=tmp_path / "out")
    journey.fleet.ec2 = aws.client("ec2", "us-east-1", None)
    h = journey.h
    # Node 1's first instance was lost after an hour ($1.50 recorded); its replacement (spot)
    # and the survivor (on-demand) have run 30 minutes and bill on.
    h.members = [
        history.Member(0, "i-0", "g5.xlarge", "us-east-1a", "on-demand", _ago(30)),
        history.Member(1, "i-1", "g5.xlarge", "us-east-1a", "spot", _ago(90), _ago(30), "lost", 1.5),
        history.Member(1, "i-2", "g5.xlarge", "us-east-1a", "spot", _ago(30)),
    ]
    attempt = Attempt(2, launched_at=_ago(30), market="spot", last_step=7)
    h.attempts = [Attempt(1, cost_usd=None, outcome="preempted"), attempt]
    expected = 1.5 + 0.40 * 0.5 + 1.006 * 0.5
    assert journey.budget.cost_so_far(attempt) == pytest.approx(expected, rel=1e-3)

    # Each node's notice watcher (a stand-in process here, its pid where the watcher writes it)
    # gets the TERM that `fab stop` sends, through that node's SSH.
    watchers = []
    for k in range(2):
        remote = sshd.root / f"node{k}"
        rdir = Path(runs.run_dir(str(remote), PLAN.run))
        rdir.mkdir(parents=True)
        proc = subprocess.Popen(["sleep", "300"])
        (rdir / "watcher.pid").write_text(f"{proc.pid}\n")
        watchers.append(proc)
    journey.fleet.machines = [
        Machine(sshd.record(name=f"job-{k}", remote_dir=str(sshd.root / f"node{k}"))) for k in range(2)
    ]
    try:
        journey.budget.check(attempt)
        assert [p.wait(timeout=30) for p in watchers] == [-15, -15]  # SIGTERM, on both nodes
    finally:
        for p in watchers:
            if p.poll() is None:
                p.kill()
    assert journey.budget.stopping
    assert (
        f"cost ${expected:.2f} reached max_cost_usd $2: asking the trainer on every node (2) to "
        "checkpoint and stop"
    ) in capsys.readouterr().out
    assert h.events[-1]["event"] == "max-cost"

    # At the cap, no attempt is launched any more: the survivors' billing counts too. A node
    # lost meanwhile is not replaced (a cluster's replacements launch in recover, before the
    # next attempt).
    with pytest.raises(budget.BudgetReached) as stop:
        journey.budget.before_launch()
    assert stop.value.exit_code == STOPPED_RESUMABLE
    assert str(stop.value) == (
        f"cost ${expected:.2f} reached max_cost_usd $2: stopped at step 7 with a checkpoint "
        "(s3://spot-ckpt/job/ckpt); run again with a higher max_cost_usd to go on"
    )
    with pytest.raises(budget.BudgetReached):
        journey.recover(attempt, ClusterVerdict("interrupted", (1,)))
    assert journey.fleet.ec2.describe_instances()["Reservations"] == []  # nothing launched


def test_the_deadline_projects_a_cluster_with_every_nodes_interruptions_and_moves_every_node(
    aws_env, tmp_path, capsys
):
    prices.inject({}, {"g5.12xlarge": G5_12X})
    cfg = config("deadline=2026-01-01T00:00:00Z", "instance_types=[g5.12xlarge]")
    cluster = ClusterJourney(cfg, "job", PLAN, 4, outputs=tmp_path / "c")
    one = Journey(cfg, "one", PLAN, outputs=tmp_path / "o")
    projections = []
    for engine in (cluster, one):
        attempt = Attempt(1, instance_type="g5.12xlarge", market="spot", launched_at=_ago(5), last_step=100)
        # Rank 0's log: step 0 100 s ago, step 100 now (the engine's attempt.last_step).
        engine.budget._first = (1, time.time() - 100, 0)
        projections.append(engine.budget.project(attempt))
        engine.budget.check_deadline(attempt)
    c, o = projections
    assert c.steps_left == o.steps_left == 1400 and c.step_s == pytest.approx(1.0, rel=0.05)
    # Any of 4 spot nodes interrupted stops the run: 4 times one instance's expected interruptions.
    assert c.expected_interruptions == pytest.approx(4 * o.expected_interruptions, rel=0.05)
    assert c.expected_interruptions > 0
    out = capsys.readouterr().out
    assert "misses the deadline 2026-01-01 00:00:00 UTC: every node of the next attempt (4) runs " in out
    assert f"on-demand at ${float(G5_12X):.3f}/h (g5.12xlarge) each" in out
    assert cluster.budget.on_demand and cluster.budget.launch_cfg(cfg).market == "on-demand"
