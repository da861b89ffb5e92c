"""A detached run's budget as its boot keeps it (ec2.remote.spend, docs/budget.md "Detached runs"):
max_cost_usd before an attempt and during one, on_demand_after when an attempt ends preempted, the
config's deadline from the measured step time. The boot runs for real as a process (tests/remote/
conftest.py's machine: moto's S3 and Auto Scaling behind the AWS gate, the IMDS stand-in, tmux and
the notice watcher); the run's cost is read from moto's spot price history (flat $0.00001/h) and
the on-demand $/h the record carries from submit, or from documented answers injected in-process."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from common import aws
from common.attempt import Attempt
from ec2.remote import spend
from tests.peers import prices
from tests.peers.imds import wait_until
from tests.remote.conftest import GROUP

# A trainer's stand-in: a first step logged (the cap waits for it), then on TERM it "saves" and exits 75.
TERM_SAVES = (
    "trap 'echo saved on TERM; exit 75' TERM; echo 'Train batch 1: loss 1.0'; while true; do sleep 0.1; done"
)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def _distribution(machine) -> dict:
    [g] = machine.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    return g["MixedInstancesPolicy"]


def test_cost_so_far_prices_spot_from_the_history_and_on_demand_from_the_record(aws_env):
    """Spot at DescribeSpotPriceHistory's documented answer (injected: moto's price is flat), on-demand
    at the $/h recorded at submit; an attempt with no end was billed until the next one began."""
    from ec2.remote.detached import DetachedRun

    aws.reset_clients()
    prices.inject({("g5.xlarge", "us-east-1a"): 0.30}, {})
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    state = DetachedRun(
        name="job",
        group=GROUP,
        region="us-east-1",
        root="s3://spot-boot/r",
        command="true",
        on_demand_usd={"g5.xlarge": 1.0},
        attempts=[
            # spot, 2 h: $0.60
            Attempt(1, "i-1", "g5.xlarge", "us-east-1a", "spot", _iso(t0), _iso(t0 + timedelta(hours=2))),
            # lost mid-setup (no end): billed until attempt 3 began, 30 min on-demand: $0.50
            Attempt(2, "i-2", "g5.xlarge", "us-east-1a", "on-demand", _iso(t0 + timedelta(hours=2))),
            # running, on-demand, 1 h so far: $1.00
            Attempt(3, "i-3", "g5.xlarge", "us-east-1a", "on-demand", _iso(t0 + timedelta(hours=2.5))),
        ],
    )
    usd, unknown = spend.cost_so_far(aws.client("ec2", "us-east-1"), state, now=t0 + timedelta(hours=3.5))
    assert (round(usd, 6), unknown) == (2.1, 0)
    # The ended attempt's cost is kept in the record: read from AWS once.
    assert round(state.attempts[0].cost_usd, 6) == 0.6 and state.attempts[2].cost_usd is None
    aws.reset_clients()


def test_a_boot_at_the_cap_starts_nothing_and_stops_the_group(machine):
    t0 = datetime.now(timezone.utc) - timedelta(hours=3)
    earlier = [
        Attempt(1, "i-1", "g5.xlarge", "us-east-1a", "on-demand", _iso(t0), _iso(t0 + timedelta(hours=1)),
                outcome="preempted", exit_code=75),
    ]  # fmt: skip
    machine.submit(
        "echo never; exit 0",
        attempts=earlier,
        status="interrupted",
        max_cost_usd=1.5,
        on_demand_usd={"g5.xlarge": 2.0},  # the hour on-demand cost $2.00
    )
    out = machine.boot_to_end()
    state = machine.state()
    assert state.status == "stopped", out
    assert [a.outcome for a in state.attempts] == ["preempted", "not-started"]
    line = "cost $2.0000 reached max_cost_usd $1.5: nothing more is started"
    assert line in out and [e["line"] for e in state.events] == [line]
    assert machine.desired() == 0 and machine.shutdowns()[-1] == f"now spotrun: {line}"
    assert not machine.run_dir().exists()


def test_the_cap_reached_during_an_attempt_stops_the_trainer_with_a_checkpoint(machine):
    machine.imds.lifecycle = "on-demand"
    # $1 a second on-demand: the cap of $3 is reached a few seconds into the attempt.
    machine.submit(TERM_SAVES, max_cost_usd=3.0, on_demand_usd={"g5.xlarge": 3600.0})
    p = machine.boot("--cost-every", "0.5")
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    state = machine.state()
    assert state.status == "stopped", out
    assert [(a.outcome, a.exit_code) for a in state.attempts] == [("stopped", 75)]
    assert "saved on TERM" in (machine.run_dir() / "log").read_text()
    assert [e["event"] for e in state.events] == ["max-cost", "stopped"]
    assert "reached max_cost_usd $3: asking the trainer to checkpoint and stop" in state.events[0]["line"]
    assert machine.desired() == 0


def test_on_demand_after_switches_the_group_before_the_instance_goes(machine):
    first = Attempt(1, "i-first", "g5.xlarge", "us-east-1a", "spot", outcome="preempted", exit_code=75)
    machine.submit(
        "trap 'echo saved; exit 75' USR1; echo started; while true; do sleep 0.1; done",
        attempts=[first],
        status="interrupted",
        on_demand_after=2,
        on_demand_usd={"g5.xlarge": 1.006, "g6.xlarge": 0.805},
    )
    assert _distribution(machine)["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    p = machine.boot()
    try:
        log = machine.run_dir() / "log"
        wait_until(lambda: log.exists() and "started" in log.read_text(), 60, "the run to start")
        machine.imds.mark_interruption()
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, out
    state = machine.state()
    assert [a.outcome for a in state.attempts] == ["preempted", "preempted"], out
    # AWS replaces the instance (desired stays 1), and the replacement is on-demand.
    assert machine.desired() == 1
    policy = _distribution(machine)
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["g5.xlarge", "g6.xlarge"]
    line = "2 interruptions (on_demand_after: 2): the next attempt runs on-demand at $1.006/h (g5.xlarge)"
    assert line in out and [e["line"] for e in state.events] == [line] and state.on_demand


def test_a_projection_missing_the_deadline_switches_the_group_to_on_demand(machine):
    steps = 'for i in $(seq 1 40); do echo "Train batch $i: loss 1.0"; sleep 0.1; done; exit 0'
    machine.submit(
        steps,
        finish_by=_iso(datetime.now(timezone.utc) + timedelta(minutes=10)),
        total_steps=100_000,  # 100,000 steps at ~0.1 s: hours past the deadline
        on_demand_usd={"g5.xlarge": 1.006},
    )
    out = machine.boot_to_end()
    state = machine.state()
    assert state.status == "finished", out
    [miss] = state.events
    assert miss["event"] == "deadline-miss" and miss["on_demand_next"] is True
    assert "misses the deadline" in miss["line"]
    assert miss["line"].endswith(": the next attempt runs on-demand at $1.006/h (g5.xlarge)")
    assert _distribution(machine)["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
