"""A run picked up again (`fab run` after the laptop left, ec2/journey/reentry.py) keeps the move
to on-demand its budget made before: on_demand_after or a missed deadline said "the next attempt
runs on-demand", and the picked-up run's next launch must not go back to spot."""

from __future__ import annotations

import pytest

from common.attempt import Attempt
from ec2.journey import history
from ec2.journey.loop import Journey
from ec2.journey.reentry import PickedUp
from ec2.journey.stages import Plan
from tests.peers.moto_ec2 import config

PLAN = Plan(command="train", checkpoint_dir="s3://spot-ckpt/job/ckpt", train_config="configs/demo.yaml")

SWITCHES = {
    "on_demand_after": ("on_demand_after=1", {"event": "on-demand", "why": "on_demand_after"}),
    "deadline": ("deadline=2099-01-01T00:00:00Z", {"event": "deadline-miss", "on_demand_next": True}),
}


def _next_launch_market(journey: Journey, events: list[dict], monkeypatch) -> str:
    """Pick the run up with these events in its history; the market its next attempt would launch in."""
    h = history.RunHistory(name="job", run="train", command="train", path=str(journey.outputs / "run.json"))
    first = Attempt(1, instance_id="i-1", instance_type="g5.xlarge", zone="us-east-1a", market="spot")
    first.outcome = "preempted"
    now = Attempt(2, instance_id="i-2", instance_type="g5.xlarge", zone="us-east-1b", market="on-demand")
    h.attempts = [first, now]
    h.events = [{"at": "2026-12-07T10:00:00+00:00", **e} for e in events]
    seen = []

    def attempts(_picked) -> None:  # instead of watching and relaunching: what would launch next
        seen.append(journey.budget.launch_cfg(journey.cfg).market)

    monkeypatch.setattr(journey, "_attempts", attempts)
    journey.run(PickedUp(h, h.attempts[-1], machine=None, ec2=None))
    return seen[0]


@pytest.mark.parametrize("why", SWITCHES)
def test_a_picked_up_run_launches_on_demand_after_its_budget_moved_there(why, tmp_path, monkeypatch):
    setting, event = SWITCHES[why]
    journey = Journey(config(setting), "job", PLAN, outputs=tmp_path)
    assert _next_launch_market(journey, [event], monkeypatch) == "on-demand"


def test_a_picked_up_run_that_never_moved_stays_on_spot(tmp_path, monkeypatch):
    journey = Journey(config("on_demand_after=3"), "job", PLAN, outputs=tmp_path)
    missed_on_demand = {"event": "deadline-miss", "on_demand_next": False}  # already on-demand then
    assert _next_launch_market(journey, [{"event": "begin"}, missed_on_demand], monkeypatch) == "spot"
