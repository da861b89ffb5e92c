"""How a run's instances are launched, recovered after an interruption and let go: the part of the
attempt loop (ec2/journey/engine.py) that differs between one instance and a cluster, as small
strategies registered by name (the shape of SkyPilot's sky/jobs/recovery_strategy.py).

    relaunch      one instance per attempt; after an interruption it is terminated and the next
                  attempt launches the cheapest type and zone not yet interrupted (`fab run`)
    replace-node  N members that outlive attempts; a lost node is replaced in its zone and
                  placement group, or the whole cluster relaunched elsewhere, or on-demand once
                  the run's budget says so (`fab run --nodes N`, ec2/journey/fleet.py)
"""

from __future__ import annotations

from typing import ClassVar

from common.attempt import Attempt, Outcome
from common.times import now_iso
from ec2.errors import CapacityError, ToolkitError
from ec2.journey import report, stages
from ec2.journey.fleet import Fleet
from ec2.remote.ssh import Machine

STRATEGIES: dict[str, type[Recovery]] = {}


def register(cls: type[Recovery]) -> type[Recovery]:
    STRATEGIES[cls.name] = cls
    return cls


def make(name: str, engine) -> Recovery:
    return STRATEGIES[name](engine)


class Recovery:
    """What a strategy answers the engine (ec2.journey.engine.Engine, `self.e`: plan, history, out):

    machines, ec2     the fleet now (node order) and its region's EC2 client
    label, again      what the Ctrl-C question calls the fleet; the command that resumes by hand
    launch(attempt)   the machines for an attempt, recorded on it; returns the nodes new to it
    recover(attempt, verdict)  after an interruption, before the next attempt
    end(terminate, outcome)    the instances let go (terminated, or kept) with their end and cost
    live()            the instance ids that still bill
    leave_running(ctrl_c)      the run goes on without the laptop: recorded and named
    pick_up(picked)   go on with the attempt a killed laptop left (ec2.journey.reentry)
    """

    name: ClassVar[str]

    def __init__(self, engine):
        self.e = engine
        self.attempt: Attempt | None = None  # the attempt launched last

    def pick_up(self, picked) -> None:
        raise ToolkitError(f"a {self.name} run cannot be picked up again yet")


@register
class Relaunch(Recovery):
    """One instance per attempt, the attempt its record; relaunched elsewhere after an interruption."""

    name = "relaunch"

    def __init__(self, engine):
        super().__init__(engine)
        self.machine: Machine | None = None  # the attempt's instance until it is terminated
        self.ec2 = None
        self.exclude: set[tuple[str, str]] = set()  # (type, zone) pairs interrupted so far

    @property
    def machines(self) -> list[Machine]:
        return [self.machine] if self.machine is not None else []

    @property
    def label(self) -> str:
        return self.machine.name if self.machine is not None else self.e.name

    @property
    def again(self) -> str:
        return "`fab run`"

    def launch(self, attempt: Attempt) -> list[int]:
        self.attempt = attempt
        excluding = ", ".join(f"{t} in {z}" for t, z in sorted(self.exclude))
        excluding = f" (excluding {excluding})" if excluding else ""
        if self.e.budget.on_demand:  # on-demand is not interrupted: nothing is excluded
            excluding = " on-demand"
        self.e.out(f"attempt {attempt.number}: launching {self.e.name}{excluding}")
        self.machine = self.provision(attempt)
        return [0]

    def provision(self, attempt: Attempt) -> Machine:
        e = self.e
        # on_demand_after / deadline (ec2.journey.budget): on-demand is not interrupted, so the
        # pairs spot was interrupted in are open to it again.
        cfg = e.budget.launch_cfg(e.cfg)
        exclude = frozenset() if cfg.market == "on-demand" else frozenset(self.exclude)
        try:
            record, self.ec2 = stages.provision(cfg, e.name, exclude, e.out, e.plan.s3)
        except CapacityError as err:
            if err.code != "NoChoices" or not self.exclude:
                raise
            # Every configured type and zone has been interrupted once (with one type in one zone:
            # the first interruption). Spot capacity comes back, and recoveries remain: try them all
            # again, cheapest first, rather than fail.
            e.out("every configured type and zone has been interrupted once; trying them all again")
            self.exclude.clear()
            record, self.ec2 = stages.provision(cfg, e.name, frozenset(), e.out, e.plan.s3)
        attempt.instance_id, attempt.instance_type = record.instance_id, record.instance_type
        attempt.zone, attempt.market = record.zone, record.market
        attempt.launched_at = record.launched_at or now_iso()
        attempt.outcome = Outcome.RUNNING
        e.h.event(
            "launched",
            attempt=attempt.number,
            instance_id=record.instance_id,
            instance_type=record.instance_type,
            zone=record.zone,
            market=record.market,
        )
        return Machine(record)

    def recover(self, attempt: Attempt, verdict) -> None:
        # This instance is (being) taken back: make sure it stops billing; the next attempt
        # launches where it was not interrupted.
        self.end(terminate=True)
        self.exclude.add((attempt.instance_type, attempt.zone))
        self.e.h.event("relaunching", after_attempt=attempt.number)

    def end(self, *, terminate: bool, outcome: Outcome | None = None) -> None:
        """Close the attempt: its instance terminated (or kept), its end time and cost recorded."""
        m, attempt = self.machine, self.attempt
        if m is None or attempt is None or attempt.ended_at:
            return
        if terminate and stages.instance_state(self.ec2, m.record.instance_id) != "gone":
            stages.terminate(self.ec2, self.e.name, m.record.instance_id, self.e.out)
            self.e.h.event("terminated", instance_id=m.record.instance_id)
        attempt.ended_at = now_iso()
        attempt.cost_usd = report.fetch_cost(self.ec2, attempt)
        if outcome is not None:
            attempt.outcome = outcome
        self.e.h.save()
        if terminate:
            self.machine = None

    def live(self) -> list[str]:
        """The attempt's instance while the attempt is open, or kept (--keep) after it."""
        if self.machine is None or self.attempt is None:
            return []
        if self.attempt.ended_at and not self.e.plan.keep:
            return []
        return [self.machine.record.instance_id]

    def leave_running(self, *, ctrl_c: bool) -> None:
        m, attempt, h = self.machine, self.attempt, self.e.h
        iid = m.record.instance_id
        if ctrl_c:
            attempt.outcome = Outcome.LEFT_RUNNING
            self.e.out(
                f"left {iid} running (the run goes on in tmux). Follow it with "
                f"`fab logs --name {m.name}`; terminate it with `fab terminate --name {m.name}`"
            )
            return
        # An error while watching (AWS or SSH out of reach from the laptop): the run goes on
        # rather than be killed blind.
        h.event("left-running", instance_id=iid)
        self.e.out(
            f"{iid} ({m.name}) is still running (its run goes on in tmux): "
            f"`fab run --name {m.name}` again picks it up, `fab logs --name {m.name}` follows it, "
            f"`fab terminate --name {m.name}` ends it"
        )

    def pick_up(self, picked) -> None:
        self.attempt, self.machine, self.ec2 = picked.attempt, picked.machine, picked.ec2
        self.exclude = {(a.instance_type, a.zone) for a in self.e.h.attempts[:-1] if a.outcome.interrupted}


@register
class ReplaceNode(Recovery):
    """N members (ec2/journey/fleet.py) that outlive attempts; after an interruption the lost nodes
    are replaced in the same zone and placement group, or the cluster relaunched elsewhere, or
    (on_demand_after, deadline: ec2.journey.budget) every node relaunched on-demand."""

    name = "replace-node"

    def __init__(self, engine):
        super().__init__(engine)
        e = engine
        self.fleet = Fleet(e.cfg, e.name, e.nodes, e.h, s3=e.plan.s3, out=e.out)
        self.new: list[int] = []  # the nodes the next attempt sets up

    @property
    def machines(self) -> list[Machine]:
        return self.fleet.machines

    @property
    def ec2(self):
        return self.fleet.ec2

    @property
    def label(self) -> str:
        return f"cluster {self.e.name}"

    @property
    def again(self) -> str:
        return f"`fab run --nodes {self.e.nodes}`"

    def launch(self, attempt: Attempt) -> list[int]:
        self.attempt = attempt
        if not self.fleet.machines:
            self.fleet.cfg = self.e.budget.launch_cfg(self.e.cfg)
            self.e.out(f"launching {self.e.nodes} nodes for {self.e.name}")
            self.fleet.launch_all()
            self.new = list(range(self.e.nodes))
        attempt.nodes = self.e.nodes
        attempt.instance_ids = [m.record.instance_id for m in self.fleet.machines]
        r = self.fleet.machines[0].record
        attempt.instance_type, attempt.zone, attempt.market = r.instance_type, r.zone, r.market
        attempt.launched_at, attempt.outcome = now_iso(), Outcome.RUNNING
        new, self.new = self.new, []
        return new

    def recover(self, attempt: Attempt, verdict) -> list[int]:
        """N nodes again (Fleet.restore); the nodes that are new, to set up."""
        attempt.ended_at = attempt.ended_at or now_iso()
        attempt.nodes_lost = lost = list(verdict.lost)
        # Replacements are launched here, not in launch(): a run at max_cost_usd launches none
        # (BudgetReached; the engine then terminates the members left).
        self.e.budget.before_launch()
        # on_demand_after / deadline (ec2.journey.budget): every node of the next attempt runs
        # on-demand. A replacement takes its survivors' market, so spot survivors go too: a spot
        # node left in the cluster would interrupt the whole run again.
        self.fleet.cfg = cfg = self.e.budget.launch_cfg(self.e.cfg)
        spot = [m for m in self.fleet.live() if m.node not in lost and m.market != "on-demand"]
        if cfg.market == "on-demand" and spot:
            self.new = self.fleet.restore_on_demand(lost)
        else:
            self.new = self.fleet.restore(lost)
        self.e.h.event("restarting", after_attempt=attempt.number, new_nodes=self.new)
        return self.new

    def end(self, *, terminate: bool, outcome: Outcome | None = None) -> None:
        """The run is over: every live member terminated with the placement group and the members'
        group (or, not `terminate`, kept)."""
        if self.attempt is not None and not self.attempt.ended_at:
            self.attempt.ended_at = now_iso()
        if terminate and self.fleet.live() and self.fleet.ec2 is not None:
            self.fleet.take_down(outcome or Outcome.TERMINATED)

    def live(self) -> list[str]:
        return [m.instance_id for m in self.fleet.live()] if self.fleet.ec2 is not None else []

    def pick_up(self, picked) -> None:
        """Go on with the members a laptop left (ec2.journey.cluster_reentry.PickedUpCluster); a
        member gone meanwhile is seen gone by the watch and replaced by recover()."""
        self.attempt = picked.attempt
        self.fleet.h = self.e.h  # the history read back, not the fresh one made for a new run
        self.fleet.machines, self.fleet.ec2 = list(picked.machines), picked.ec2
        self.fleet.exclude = {
            tuple(e["excluded"])
            for e in self.e.h.events
            if e.get("event") == "relaunch-all" and e.get("excluded")
        }

    def leave_running(self, *, ctrl_c: bool) -> None:
        live = self.fleet.live()
        ids = ", ".join(m.instance_id for m in live)
        for m in live:
            m.outcome = Outcome.LEFT_RUNNING
        name = self.e.name
        follow = (
            f"`fab run --nodes {self.e.nodes} --name {name}` again picks it up, "
            f"`fab logs --name {name} --node K` follows it, `fab terminate --name {name}` ends it"
        )
        if ctrl_c:
            self.e.out(f"left {ids} running (the run goes on in tmux on every node). {follow}")
            return
        self.e.out(f"left {ids} running: the run goes on in tmux on every node. {follow}")
        self.e.h.event("left-running", instance_ids=[m.instance_id for m in live])
