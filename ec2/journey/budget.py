"""A run's budget and deadline (configs/aws.yaml: on_demand_after, max_cost_usd, deadline), as the
attempt loop (ec2/journey/engine.py) applies them to an attended run, on one instance or on a
cluster (`fab run --nodes N`):

- on_demand_after K: after K interruptions the next attempt launches on-demand (the interruptions
  that spot tools keep paying for end there; nextflow #7396, hail #13395); on a cluster every node
  of the next attempt does (an attempt interrupted counts once, however many nodes it lost), the
  spot survivors replaced too (ec2/journey/recovery.py ReplaceNode.recover);
- deadline: at each poll the finish is projected from the run's own steps (steps left × the step
  time measured on this attempt, from rank 0's log on a cluster, plus the interruptions expected on
  spot, N nodes' worth on a cluster: ec2.journey.interruptions and ec2.cloud.runcost); when it
  misses, the next attempt launches on-demand, every node of it on a cluster;
- max_cost_usd: the cost so far (ended attempts, or a cluster's ended members, as the summary
  prices them; what still bills at its current $/h × its uptime: the open attempt's instance, or
  every live member) reaching it asks the trainer to checkpoint and stop on every node, as `fab stop`
  does (TERM to each node's notice watcher; the trainer saves and exits 75); the checkpoint and logs
  come down, the instances go, and BudgetReached ends the run with the exit code of a run stopped,
  not finished (75).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common.attempt import Attempt, Outcome, RunStatus
from common.errors import STOPPED_RESUMABLE, ConfigError
from common.times import now_iso
from ec2.cloud import pricing, runcost
from ec2.errors import ToolkitError
from ec2.journey import interruptions

# The projection and its clock are the detached boot's too (ec2.remote.spend: no yaml, as the boot needs).
from ec2.remote.spend import Projection, parse_time
from ec2.remote.spend import clock as _clock

# How long an open attempt's $/h is trusted before it is read again (spot prices move slowly:
# AWS changes them at most a few times a day for most pools).
RATE_TTL_S = 300.0
# Steps an attempt must have run before its step time is trusted for the deadline's projection.
MIN_STEPS = 5


class BudgetReached(ToolkitError):
    """max_cost_usd reached: the run stopped with a checkpoint, not finished."""

    exit_code = STOPPED_RESUMABLE


KEYS = ("on_demand_after", "max_cost_usd", "deadline")


def refuse_where_unapplied(cfg, how: str) -> None:
    """Budget keys are applied by the attended loop only (one instance or a cluster): a run they
    are not applied to (`how`) with one set is refused before anything is launched, not run
    without it."""
    keys = [k for k in KEYS if getattr(cfg, k) is not None]
    if keys:
        raise ConfigError(
            f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} applied to an attended `fab run` "
            f"so far, not to {how}; unset {'it' if len(keys) == 1 else 'them'} (--set {keys[0]}=null) "
            "or run without --detach"
        )


class Budget:
    def __init__(self, engine):
        self.e = engine
        cfg = engine.cfg
        self.on_demand = cfg.market == "on-demand"  # the next attempt launches on-demand
        self.deadline = parse_time(cfg.deadline) if cfg.deadline else None
        self.stopping = False  # max_cost_usd reached: the trainer was asked to stop
        self._rates: dict[tuple, tuple[float | None, float]] = {}  # (type, zone, market) → ($/h, read at)
        self._first: tuple[int, float, int] | None = None  # (attempt, time, step) first seen
        self._said_deadline: int | None = None  # the attempt whose miss was said
        self._trainer = None
        self._records = None

    # --- the market of the next attempt ---------------------------------------------------------
    def launch_cfg(self, cfg):
        """The config the next attempt launches with (one instance, or every node of a cluster):
        on-demand once the budget says so."""
        return dataclasses.replace(cfg, market="on-demand") if self.on_demand else cfg

    def pick_up(self, h) -> None:
        """A run picked up again (`fab run` after the laptop left): a move to on-demand it made
        before (on_demand_after, or a missed deadline) holds for its next attempts too."""
        for ev in h.events:
            kind = ev.get("event")
            if kind == "on-demand" or (kind == "deadline-miss" and ev.get("on_demand_next")):
                self.on_demand = True

    def after_interruption(self) -> None:
        """on_demand_after: the K-th interruption moves the next attempt to on-demand (one line)."""
        k, h = self.e.cfg.on_demand_after, self.e.h
        count = sum(1 for a in h.attempts if a.outcome.interrupted)
        if k is None or count < k or self.on_demand:
            return
        self.on_demand = True
        self.e.out(f"{count} interruption{'s' if count > 1 else ''} (on_demand_after: {k}): {self._next()}")
        h.event("on-demand", why="on_demand_after", interruptions=count)

    def _next(self) -> str:
        """What the switch means for the next attempt, with the on-demand $/h."""
        rate = self._on_demand_rate()
        if self.e.nodes > 1:
            return f"every node of the next attempt ({self.e.nodes}) runs on-demand at {rate} each"
        return f"the next attempt runs on-demand at {rate}"

    def _on_demand_rate(self) -> str:
        """$/h of the type an on-demand launch tries first (the configured order)."""
        cfg = self.e.cfg
        t = cfg.instance_types[0]
        usd = pricing.on_demand_price(t, cfg.region, cfg.profile)
        return f"{'?' if usd is None else f'${usd:.3f}'}/h ({t})"

    # --- at each poll of a running attempt ----------------------------------------------------
    def check(self, attempt: Attempt) -> None:
        if attempt.launched_at is None:
            return
        # The stop waits for the trainer's first step: before it there is no watcher to signal
        # and nothing to checkpoint (the cost still counts from the launch).
        if self.e.cfg.max_cost_usd is not None and not self.stopping and attempt.last_step is not None:
            cost = self.cost_so_far(attempt)
            if cost is not None and cost >= self.e.cfg.max_cost_usd:
                self.stop_trainer(cost)
        if self.deadline is not None:
            self.check_deadline(attempt)

    # --- max_cost_usd -----------------------------------------------------------------------------
    def hourly(self, x) -> float | None:
        """$/h now of what bills (an open attempt's instance, or a cluster member): its spot pool's
        current price, or its on-demand price; read again after RATE_TTL_S."""
        key, now = (x.instance_type, x.zone, x.market), time.monotonic()
        if key in self._rates and now - self._rates[key][1] < RATE_TTL_S:
            return self._rates[key][0]
        if x.market == "spot":
            points = pricing.spot_history(self.e.strategy.ec2, [x.instance_type], zones=[x.zone])
            usd = pricing.current_prices(points).get((x.instance_type, x.zone))
        else:
            usd = pricing.on_demand_price(x.instance_type, pricing.region_of_zone(x.zone), self.e.cfg.profile)
        self._rates[key] = (usd, now)
        return usd

    def billing(self, attempt: Attempt | None) -> list:
        """What bills now and has no cost recorded yet: the open attempt (one instance), or every
        member not terminated yet (a cluster: its members outlive attempts)."""
        if self.e.nodes > 1:
            return [m for m in self.e.h.members if m.ended_at is None and m.launched_at]
        if attempt is None or attempt.ended_at or attempt.launched_at is None:
            return []
        return [attempt]

    def cost_so_far(self, attempt: Attempt | None) -> float | None:
        """Every ended attempt's or member's recorded cost, plus the uptime of what still bills at
        its current $/h (None when a price is unknown)."""
        h, now = self.e.h, self.billing(attempt)
        ended = sum(
            x.cost_usd for x in [*h.attempts, *h.members] if x.cost_usd and all(x is not b for b in now)
        )
        for x in now:
            usd = self.hourly(x)
            if usd is None:
                return None
            up = (datetime.now(UTC) - parse_time(x.launched_at)).total_seconds()
            ended += usd * max(up, 0.0) / 3600
        return ended

    def stop_trainer(self, cost: float) -> None:
        """Ask the trainer on every node to checkpoint and exit 75, as `fab stop` does."""
        from ec2.remote import runs

        self.stopping = True
        cap = self.e.cfg.max_cost_usd
        who = f"the trainer on every node ({self.e.nodes})" if self.e.nodes > 1 else "the trainer"
        self.e.out(f"cost ${cost:.2f} reached max_cost_usd ${cap:g}: asking {who} to checkpoint and stop")
        self.e.h.event("max-cost", cost_usd=round(cost, 6), max_cost_usd=cap)
        for m in self.e.machines:
            try:
                m.run(
                    runs.graceful_stop_command(m.record.remote_dir, self.e.plan.run), check=False, retry=False
                )
            except ToolkitError as err:
                self.e.out(f"could not ask {m.name} to stop ({err}); it is terminated after the download")

    def before_launch(self) -> None:
        """A run already at its cap launches nothing more (an interruption during the stop)."""
        cap = self.e.cfg.max_cost_usd
        if cap is None:
            return  # no prices to read: a cluster's live members would each cost a price lookup
        cost = self.cost_so_far(None)
        if cost is not None and cost >= cap:
            self.e.h.status, self.e.h.finished_at = RunStatus.STOPPED, now_iso()
            raise BudgetReached(self._stopped_line(cost, self._last_step()))

    def stopped(self, attempt: Attempt, verdict) -> None:
        """The trainer stopped for the cap: its checkpoint and log down, the instances let go, the
        run recorded stopped, BudgetReached."""
        e = self.e
        attempt.outcome = Outcome.STOPPED
        e.collect(attempt, verdict)
        e.strategy.end(terminate=True)
        e.h.status, e.h.finished_at = RunStatus.STOPPED, now_iso()
        cost = e.h.total_cost_usd
        e.h.event("stopped", why="max_cost_usd", cost_usd=cost)
        raise BudgetReached(self._stopped_line(cost, self._last_step()))

    def _last_step(self) -> int | None:
        return next((a.last_step for a in reversed(self.e.h.attempts) if a.last_step is not None), None)

    def _stopped_line(self, cost: float | None, step: int | None) -> str:
        # The laptop's copy when the checkpoints live on the instance's disk, else their S3 prefix.
        p = self.e.plan
        where = p.local_checkpoint(Path(self.e.outputs)) or p.checkpoint_dir or "the checkpoint folder"
        spent = "?" if cost is None else f"${cost:.2f}"
        return (
            f"cost {spent} reached max_cost_usd ${self.e.cfg.max_cost_usd:g}: "
            f"stopped at step {'?' if step is None else step} with a checkpoint ({where}); "
            "run again with a higher max_cost_usd to go on"
        )

    # --- deadline --------------------------------------------------------------------------------
    def trainer(self):
        """The run's train config (its steps and how often it saves), read once."""
        if self._trainer is None:
            from ml.config import load_train_config

            p = self.e.plan
            self._trainer = load_train_config(p.train_config, p.overrides)
        return self._trainer

    def project(self, attempt: Attempt) -> Projection | None:
        """The finish from this attempt's measured step time, None until it has run MIN_STEPS."""
        step, now = attempt.last_step, time.time()
        if step is None:
            return None
        if self._first is None or self._first[0] != attempt.number:
            self._first = (attempt.number, now, step)
            return None
        _, t0, s0 = self._first
        if step - s0 < MIN_STEPS or now <= t0:
            return None
        step_s = (now - t0) / (step - s0)
        t = self.trainer()
        left = max(t.num_training_batches - step, 0)
        seconds = left * step_s
        expected, recovery = 0.0, 0.0
        if attempt.market == "spot":
            # Each interruption costs the recovery plus half a checkpoint interval recomputed.
            interval = runcost.checkpoint_interval(t.batches_per_save, t.batches_per_val_step)
            if self._records is None:  # this user's run records, read once per run
                self._records = interruptions.observed(Path(self.e.outputs).parent)
            rate = interruptions.for_type(self._records, attempt.instance_type)
            # Any of a cluster's N spot nodes interrupted stops the run: N times the rate of one.
            expected = rate.per_hour * self.e.nodes * seconds / 3600
            recovery = rate.recovery_s + 0.5 * interval * step_s
        finish = datetime.now(UTC) + timedelta(seconds=seconds + expected * recovery)
        return Projection(finish, left, step_s, expected, recovery)

    def check_deadline(self, attempt: Attempt) -> None:
        """Say once per attempt when the projection misses the deadline; the next attempt then
        launches on-demand (or, on-demand already, the run is said to miss it)."""
        if self._said_deadline == attempt.number:
            return
        proj = self.project(attempt)
        if proj is None or proj.finish <= self.deadline:
            return
        self._said_deadline = attempt.number
        miss = f"{proj.line()} misses the deadline {_clock(self.deadline)}"
        if attempt.market == "spot" and not self.on_demand:
            self.on_demand = True
            self.e.out(f"{miss}: {self._next()}")
        else:
            self.e.out(f"{miss}: already on-demand, the run will miss it")
        self.e.h.event(
            "deadline-miss",
            attempt=attempt.number,
            projected=proj.finish.isoformat(),
            deadline=self.deadline.isoformat(),
            on_demand_next=self.on_demand,
        )
