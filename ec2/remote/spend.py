"""A detached run's budget and deadline as its boot (ec2.remote.boot) keeps them, with no laptop:
the record's on_demand_after, max_cost_usd and finish_by (configs/aws.yaml `deadline`), written at
submit (ec2.journey.detach). docs/budget.md, "Detached runs".

- cost: every attempt of the record, billed from its boot's start to its end (or to the next
  attempt's start, or now): spot at the spot price history of its type and zone integrated over
  that time (DescribeSpotPriceHistory, read-only: the instance role's one EC2 grant), on-demand at
  the $/h recorded at submit (the instance role has no Pricing API grant);
- the switch to on-demand: the group's instances distribution to 100 % on-demand, so the
  replacement AWS launches after this instance goes is on-demand. Only InstancesDistribution is
  sent: UpdateAutoScalingGroup takes a mixed instances policy without its LaunchTemplate ("not
  required when updating the group", API_MixedInstancesPolicy), and an update that names no launch
  template needs no ec2:RunInstances or iam:PassRole (those are checked "when an Auto Scaling group
  is created or updated using a launch template",
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-launch-template-permissions.html),
  so the instance role gets autoscaling:UpdateAutoScalingGroup on its own group and nothing more;
- the projection: steps left (the record's total_steps less the last step the log shows) × the
  step time measured over this attempt, plus on spot the interruptions expected in that time ×
  what each costs, as the attended loop projects (ec2.journey.budget).

Standard library, boto3, common/ and the light ec2 modules only (it runs with the instance's Python).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import botocore.exceptions

from common.attempt import Attempt
from common.aws import error_code
from common.errors import ToolkitError
from common.times import now_iso
from ec2.cloud import pricing
from ec2.cloud.asg import distribution
from ec2.remote.detached import DetachedRun

# How often a running attempt's cost is read again (spot prices move a few times a day at most;
# one DescribeSpotPriceHistory per attempt each time).
COST_EVERY_S = 300.0
# Steps an attempt must have run before its step time is trusted for the projection.
MIN_STEPS = 5


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def clock(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def event(state: DetachedRun, kind: str, line: str, **fields) -> None:
    """An entry of the record's events: `fab watch` prints its line."""
    state.events.append({"at": now_iso(), "event": kind, "line": line, **fields})


# --- cost -------------------------------------------------------------------------------------------
def _billed(state: DetachedRun, i: int, now: datetime) -> tuple[datetime, datetime] | None:
    a = state.attempts[i]
    if not a.launched_at:
        return None
    later = state.attempts[i + 1].launched_at if i + 1 < len(state.attempts) else None
    # An attempt with no end recorded (its instance lost mid-setup) was billed until the next began.
    end = a.ended_at or later
    return parse_time(a.launched_at), parse_time(end) if end else now


def attempt_cost(ec2, state: DetachedRun, i: int, now: datetime) -> float | None:
    a: Attempt = state.attempts[i]
    span = _billed(state, i, now)
    if span is None or not a.instance_type:
        return None
    start, end = span
    if a.market == "spot":
        points = pricing.spot_history(ec2, [a.instance_type], start, end, zones=[a.zone]).get(
            (a.instance_type, a.zone), []
        )
        return pricing.cost_over(points, start, end)
    usd = state.on_demand_usd.get(a.instance_type) or pricing.ON_DEMAND_USD_PER_HOUR.get(a.instance_type)
    return None if usd is None else usd * max((end - start).total_seconds(), 0.0) / 3600


def cost_so_far(ec2, state: DetachedRun, now: datetime | None = None) -> tuple[float, int]:
    """(USD of every attempt so far, how many attempts could not be priced). An ended attempt's
    cost is kept in the record (cost_usd), so it is read from AWS once."""
    now = now or datetime.now(timezone.utc)
    total, unknown = 0.0, 0
    for i, a in enumerate(state.attempts):
        ended = a.ended_at is not None
        usd = a.cost_usd if ended and a.cost_usd is not None else attempt_cost(ec2, state, i, now)
        if usd is None:
            unknown += 1
            continue
        if ended:
            a.cost_usd = usd
        total += usd
    return total, unknown


# --- the switch to on-demand ------------------------------------------------------------------------
def use_on_demand(asg, state: DetachedRun) -> str | None:
    """The group launches on-demand from now on; None, or why it could not be switched."""
    try:
        asg.update_auto_scaling_group(
            AutoScalingGroupName=state.group,
            MixedInstancesPolicy={
                "InstancesDistribution": distribution("on-demand", None, state.prioritized)
            },
        )
    except botocore.exceptions.ClientError as e:
        return f"switching {state.group} to on-demand failed ({error_code(e)}): {e}"
    except botocore.exceptions.BotoCoreError as e:
        return f"switching {state.group} to on-demand failed: {e}"
    state.on_demand = True
    return None


def on_demand_rate(state: DetachedRun) -> str:
    """$/h of the group's first type on-demand (the order it launches in)."""
    if not state.on_demand_usd:
        return "?/h"
    t, usd = next(iter(state.on_demand_usd.items()))
    return f"${usd:.3f}/h ({t})"


# --- the deadline's projection ----------------------------------------------------------------------
@dataclass
class Projection:
    finish: datetime
    steps_left: int
    step_s: float
    expected_interruptions: float
    recovery_s: float

    def line(self) -> str:
        extra = ""
        if self.expected_interruptions:
            extra = f" + {self.expected_interruptions:.2f} expected interruptions x {self.recovery_s:.0f} s"
        return (
            f"projected finish {clock(self.finish)} ({self.steps_left} steps left x "
            f"{self.step_s:.3f} s{extra})"
        )


class StepClock:
    """The step time of one attempt, from the first step its log showed to the last."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None

    def project(self, state: DetachedRun, step: int | None, spot: bool) -> Projection | None:
        now = time.time()
        if step is None or state.total_steps is None:
            return None
        if self.first is None:
            self.first = (now, step)
            return None
        t0, s0 = self.first
        if step - s0 < MIN_STEPS or now <= t0:
            return None
        step_s = (now - t0) / (step - s0)
        left = max(state.total_steps - step, 0)
        seconds = left * step_s
        expected = recovery = 0.0
        if spot and state.interruptions_per_hour:
            expected = state.interruptions_per_hour * seconds / 3600
            recovery = (state.recovery_s or 0.0) + 0.5 * (state.checkpoint_every or 0) * step_s
        finish = datetime.now(timezone.utc) + timedelta(seconds=seconds + expected * recovery)
        return Projection(finish, left, step_s, expected, recovery)


def unpriced(err: ToolkitError) -> str:
    return f"the run's cost could not be read ({err}); the cap is checked again later"
