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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import botocore.exceptions

from common.attempt import Attempt
from common.aws import error_code
from common.errors import ToolkitError
from common.times import now_iso
from ec2.cloud import pricing
from ec2.cloud.asg import distribution
from ec2.remote import runs
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


def tail(path: Path, size: int = 16384) -> str:
    """The end of the run's log (where its last step is), or "" before it exists."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, 2) - size, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# --- what one boot does with them -------------------------------------------------------------------
class Keeper:
    """The budget of one boot (ec2.remote.boot.Boot: its record, attempt, identity and clients);
    each decision is logged and recorded through the boot's `note` (the record's events)."""

    def __init__(self, boot, cost_every_s: float = COST_EVERY_S, log: Callable[[str], None] = print):
        self.b = boot
        self.cost_every_s = cost_every_s
        self.log = log
        self.reached = False  # max_cost_usd reached during the attempt: the trainer was asked to stop
        self._cost_read_at: float | None = None
        self._steps = StepClock()
        self._deadline_said = False

    def cost(self) -> float | None:
        try:
            usd, unknown = cost_so_far(self.b.ec2, self.b.state)
        except ToolkitError as e:
            self.log(f"the run's cost could not be read ({e}); the cap is checked again later")
            return None
        if unknown:
            self.log(f"{unknown} attempt(s) could not be priced: the cost so far counts the others")
        return usd

    def before(self) -> str | None:
        """max_cost_usd before anything starts: None, or why this attempt runs nothing."""
        cap = self.b.state.max_cost_usd
        if cap is None:
            return None
        usd = self.cost()
        if usd is None or usd < cap:
            return None
        return f"cost ${usd:.4f} reached max_cost_usd ${cap:g}: nothing more is started"

    def poll(self, run_dir: Path) -> None:
        """At each poll of a running attempt: the cap every cost_every_s, the deadline's projection."""
        s = self.b.state
        step = runs.last_step(tail(run_dir / "log"))
        now = time.monotonic()
        due = self._cost_read_at is None or now - self._cost_read_at >= self.cost_every_s
        # The stop waits for the trainer's first step, as the attended loop's does: before it the
        # trainer has no stop handler yet (TERM would kill it, exit 143) and nothing to checkpoint.
        # The cost still counts from the boot's start.
        if s.max_cost_usd is not None and not self.reached and due and step is not None:
            self._cost_read_at = now
            usd = self.cost()
            if usd is not None and usd >= s.max_cost_usd:
                self.reached = True
                self.b.note(
                    "max-cost",
                    f"cost ${usd:.4f} reached max_cost_usd ${s.max_cost_usd:g}: "
                    "asking the trainer to checkpoint and stop",
                    cost_usd=round(usd, 6),
                    max_cost_usd=s.max_cost_usd,
                )
        if s.finish_by is not None and not self._deadline_said:
            self.check_deadline(step)

    def check_deadline(self, step: int | None) -> None:
        """Once per attempt: a projection that misses switches the group to on-demand (or, on
        on-demand already, says the run will miss it)."""
        s, market = self.b.state, self.b.me.market
        proj = self._steps.project(s, step, spot=market == "spot")
        deadline = parse_time(s.finish_by)
        if proj is None or proj.finish <= deadline:
            return
        self._deadline_said = True
        miss = f"{proj.line()} misses the deadline {clock(deadline)}"
        if market == "spot" and not s.on_demand:
            failed = use_on_demand(self.b.asg, s)
            line = (
                f"{miss}: the next attempt runs on-demand at {on_demand_rate(s)}"
                if failed is None
                else f"{miss}; {failed}: the next attempt stays spot"
            )
        else:
            line = f"{miss}: already on-demand, the run will miss it"
        self.b.note(
            "deadline-miss",
            line,
            projected=proj.finish.isoformat(),
            deadline=deadline.isoformat(),
            on_demand_next=s.on_demand,
        )

    def after_interruption(self) -> None:
        """on_demand_after: the K-th interruption switches the group before this instance goes."""
        s = self.b.state
        k = s.on_demand_after
        count = sum(1 for a in s.attempts if a.outcome.interrupted)
        if k is None or count < k or s.on_demand:
            return
        failed = use_on_demand(self.b.asg, s)
        said = f"{count} interruption{'s' if count > 1 else ''} (on_demand_after: {k})"
        if failed is None:
            self.b.note(
                "on-demand",
                f"{said}: the next attempt runs on-demand at {on_demand_rate(s)}",
                why="on_demand_after",
                interruptions=count,
            )
        else:
            self.b.note(
                "on-demand-failed", f"{said}; {failed}: the next attempt stays spot", interruptions=count
            )
