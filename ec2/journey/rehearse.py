"""`fab rehearse`: interrupt a running run's instance for real (AWS FIS, ec2/cloud/fis.py) and follow
the run through notice → checkpoint in S3 → exit 75 → replacement → resumed, from the run's own
records: an attended or cluster run's outputs/<name>/run.json (ec2.journey.history), a detached
run's S3 record (ec2.remote.detached). The report gives the seconds of each phase, the steps lost
and what the rehearsal cost (instance-seconds x the spot price).

Refused in one line, before anything is made: an on-demand instance (FIS interrupts spot ones), a
run whose checkpoints are not in S3 (common.checks), a region FIS cannot interrupt in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import aws
from common.attempt import Attempt
from common.checks import REHEARSAL, require_s3_checkpoints
from ec2 import paths
from ec2.cloud import account, cluster, fis, instances, pricing
from ec2.cloud.fis import RehearsalRefused
from ec2.config import AwsConfig
from ec2.journey import history
from ec2.journey.report import money

Say = Callable[[str], None]


@dataclass
class Target:
    """What is interrupted, and where the run's record is read."""

    kind: str  # attended | cluster | detached
    instance: instances.InstanceInfo
    checkpoint_dir: str | None
    read: Callable[[], history.RunHistory]  # the run's record now
    node: int | None = None


@dataclass
class Budgets:
    """Seconds each wait may take before the rehearsal says what it did not see."""

    started: float = 300  # FIS: pending/initiating → running
    notice: float = 300  # the watcher sees the notice (FIS sends it at once)
    safe: float = 300  # checkpoint in S3 and exit 75 (the two minutes, and slack)
    replacement: float = 1200  # a new instance launched (attended: the laptop's loop)
    resumed: float = 1800  # the replacement's trainer resumed from the checkpoint
    ended: float = 600  # FIS: the experiment completed
    poll: float = 5.0


@dataclass
class Report:
    kind: str
    instance_id: str
    instance_type: str
    node: int | None
    phases: list[tuple[str, float | None]] = field(default_factory=list)
    steps_lost: int | None = None
    exit_code: int | None = None  # the command's, on the notice (75: stopped to resume)
    instance_seconds: float | None = None
    price_per_hour: float | None = None
    fis_minutes: int | None = None  # the action's minutes, as FIS bills them

    @property
    def instance_usd(self) -> float | None:
        if self.instance_seconds is None or self.price_per_hour is None:
            return None
        return self.instance_seconds * self.price_per_hour / 3600

    @property
    def fis_usd(self) -> float | None:
        return None if self.fis_minutes is None else self.fis_minutes * fis.USD_PER_ACTION_MINUTE

    @property
    def cost_usd(self) -> float | None:
        if self.instance_usd is None or self.fis_usd is None:
            return None
        return self.instance_usd + self.fis_usd

    def lines(self) -> list[str]:
        node = f" node {self.node}" if self.node is not None else ""
        article = "an" if self.kind[0] in "aeiou" else "a"
        rows = [(label, "?" if sec is None else f"{sec:.1f} s") for label, sec in self.phases]
        code = "not recorded" if self.exit_code is None else str(self.exit_code)
        if self.exit_code not in (None, 75):
            code += " (not 75: the trainer did not stop resumably on the notice)"
        rows.append(("exit code on the notice", code))
        rows.append(
            (
                "steps lost",
                "unknown (the record keeps no steps)" if self.steps_lost is None else str(self.steps_lost),
            )
        )
        price = "?" if self.price_per_hour is None else f"${self.price_per_hour:.4f}/h"
        secs = "?" if self.instance_seconds is None else f"{self.instance_seconds:.0f}"
        fis_part = (
            "?"
            if self.fis_minutes is None
            else f"{self.fis_minutes} FIS action-minute(s) x ${fis.USD_PER_ACTION_MINUTE:.2f}"
        )
        rows.append(
            (
                "rehearsal cost",
                f"{money(self.cost_usd)} = {money(self.instance_usd)} ({secs} instance-seconds x {price})"
                f" + {money(self.fis_usd)} ({fis_part})",
            )
        )
        head = (
            f"rehearsal of {article} {self.kind} run: {self.instance_id}{node} ({self.instance_type}) "
            "interrupted by AWS FIS"
        )
        return [head, *(f"  {label:<36} {value}" for label, value in rows)]


# ---- finding the target -----------------------------------------------------------------------------


def find_target(cfg: AwsConfig, name: str, node: int | None, outputs: Path | None, region: str) -> Target:
    """The instance to interrupt and how to read its run, refusing what cannot be rehearsed."""
    from ec2.journey import detach_nodes
    from ec2.journey.detach import Detached
    from ec2.remote import detached

    ec2 = aws.client("ec2", region, cfg.profile)
    d = Detached(cfg, name)
    if d.root() is not None:
        if node is not None:
            raise RehearsalRefused(f"{name} is a detached run of one instance; leave out --node")
        where = d.look()
        if where.current is None or where.state is None:
            raise RehearsalRefused(
                f"detached run {name} has no running instance now; `fab watch --name {name}`"
            )
        state = where.state

        root = d.root()

        def read_detached() -> history.RunHistory:
            # The S3 record alone, one GET a poll: its attempts are what the boots noted (the
            # notice, the seconds to safe, the steps, the resume); no prices are needed to follow.
            now = detached.load(d.s3, root) or state
            return history.RunHistory(
                name=now.name, started_at=now.submitted_at, status=now.status, attempts=now.attempts
            )

        return Target("detached", where.current, state.checkpoint_dir, read_detached)
    if detach_nodes.member_groups(d.asg, name):
        # Its members' boots do not note the notice and the resume in its S3 record yet, so a
        # report would have no phase to time: refused rather than a report of question marks.
        raise RehearsalRefused(
            f"{name} is a detached cluster (fab run --detach --nodes): fab rehearse follows an attended "
            "run, an attended cluster's node (fab run --nodes, --node K) or a detached run of one "
            "instance, not yet a detached cluster"
        )
    path = history.history_path(outputs or paths.outputs_dir(name))
    if not path.is_file():
        raise RehearsalRefused(
            f"no run history at {path}: `fab rehearse` interrupts a run started by `fab run --name {name}` "
            "(pass --dest if that run had one)"
        )
    h = history.load(path)
    if h.status != "running" or not h.attempts or not h.attempts[-1].outcome.open:
        raise RehearsalRefused(
            f"run {name} is not running (its history says {h.status}); start it with `fab run`"
        )
    last = h.attempts[-1]
    if h.nodes > 1:
        if node is None:
            raise RehearsalRefused(f"{name} is a {h.nodes}-node cluster: pass --node K (0 to {h.nodes - 1})")
        if not 0 <= node < h.nodes:
            raise RehearsalRefused(f"--node {node}: {name} has nodes 0 to {h.nodes - 1}")
        live = {i.instance_id: i for i in cluster.members(ec2, name)}
        instance_id = last.instance_ids[node] if node < len(last.instance_ids) else None
        kind = "cluster"
    else:
        if node is not None:
            raise RehearsalRefused(f"{name} runs on one instance; leave out --node")
        live = {i.instance_id: i for i in instances.find_instances(ec2, name)}
        instance_id = last.instance_id
        kind = "attended"
    info = live.get(instance_id or "")
    if info is None or info.state != "running":
        raise RehearsalRefused(
            f"run {name}'s instance {instance_id} is not running in {region}; see `fab status`"
        )
    return Target(kind, info, h.checkpoint_dir, lambda: history.load(path), node)


def refuse(target: Target, region: str) -> None:
    """The one-line refusals, in the order a user can act on them."""
    fis.refuse_region(region)
    if target.instance.market != "spot":
        raise RehearsalRefused(
            f"{target.instance.instance_id} is an on-demand instance: AWS FIS interrupts only spot "
            "instances, and an on-demand one is never interrupted; rehearse a spot run"
        )
    require_s3_checkpoints(target.checkpoint_dir, REHEARSAL)


# ---- following the run --------------------------------------------------------------------------------


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _wait(what: str, budget_s: float, poll_s: float, check: Callable[[], object], out: Say):
    """Until ``check()`` returns something, within the budget; says what it waits for."""
    out(f"waiting up to {budget_s:g} s for {what}")
    deadline = time.monotonic() + budget_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RehearsalRefused(
                f"no {what} within {budget_s:g} s of waiting; the run's record is as it was, see "
                "`fab status` and the run's log"
            )
        time.sleep(poll_s)


def _interrupted(h: history.RunHistory, instance_id: str) -> tuple[int, Attempt] | None:
    for k, a in enumerate(h.attempts):
        if instance_id == a.instance_id or instance_id in a.instance_ids:
            return k, a
    return None


def _span(start: float | None, end: float | None) -> float | None:
    """Seconds from start to end, never below 0: the two ends may come from two clocks (the
    laptop's and the instance's watcher), and a notice the watcher saw within the laptop's own
    round trip to FIS would otherwise read as a negative time."""
    return None if not (start and end) else max(end - start, 0.0)


def follow(target: Target, started_at: float, budgets: Budgets, out: Say) -> Report:
    """Notice → safe → exit → replacement → resumed, as the run's own record shows them."""
    iid = target.instance.instance_id
    k = _interrupted(target.read(), iid)
    if k is None:
        raise RehearsalRefused(f"{iid} is in none of the run's attempts; is another run using it?")
    index = k[0]

    def attempt(offset: int = 0) -> Attempt | None:
        h = target.read()
        return h.attempts[index + offset] if len(h.attempts) > index + offset else None

    def noticed():
        a = attempt()
        # The laptop notes the notice as its watcher saw it; a detached run's boot notes it when the
        # attempt ends (ec2.remote.attempt_notes). An attempt that ended interrupted with no notice
        # noted (the instance went before its watcher saw one) is past it too.
        return a if a and (a.notice_seen_at or a.outcome.interrupted) else None

    def safe():
        a = attempt()
        return a if a and a.outcome.interrupted and a.ended_at else None

    def replaced():
        return attempt(1)

    def resumed():
        # The trainer's "resumed from ... at step N", noted by the laptop (run.json) or by a
        # detached run's boot (its S3 record) as it appears in the log.
        a = attempt(1)
        return a if a and (a.resumed_step is not None or a.outcome == "finished") else None

    before = _wait(
        f"the spot notice on {iid} (the run's watcher)", budgets.notice, budgets.poll, noticed, out
    )
    notice_at = before.notice_seen_at
    _wait(f"the checkpoint in S3 and exit 75 on {iid}", budgets.safe, budgets.poll, safe, out)
    after = _wait("a replacement instance", budgets.replacement, budgets.poll, replaced, out)
    new_id = _replacement(target.read(), after, target.node)[0]
    _wait(f"the run to resume on {new_id}", budgets.resumed, budgets.poll, resumed, out)
    resumed_at = time.time()
    h = target.read()
    before, after = h.attempts[index], h.attempts[index + 1]
    # When the laptop saw the attempt end (its "interrupted" event); the detached record has no
    # events, and its attempt's end stands for it.
    seen = [e for e in h.events if e.get("event") == "interrupted" and e.get("attempt") == before.number]
    exited_at = _epoch(seen[0]["at"]) if seen else _epoch(before.ended_at)
    launched_at = _replacement(h, after, target.node)[1]
    report = Report(target.kind, iid, target.instance.instance_type, target.node, exit_code=before.exit_code)
    report.phases = [
        ("FIS start → notice seen", _span(started_at, notice_at)),
        ("notice → checkpoint in S3", before.seconds_notice_to_safe),
        ("notice → run exited", _span(notice_at, exited_at)),
        ("exited → replacement launched", _span(exited_at, launched_at)),
        (
            "notice → resumed",
            after.seconds_notice_to_resumed
            if after.seconds_notice_to_resumed is not None
            else _span(notice_at, resumed_at),
        ),
    ]
    if before.last_step is not None and after.resumed_step is not None:
        report.steps_lost = max(before.last_step - after.resumed_step, 0)
    # What the rehearsal added: the interrupted instance from the experiment's start to its end, and
    # the replacement from its launch to the resume.
    ended_at = _epoch(before.ended_at) or resumed_at
    report.instance_seconds = max(ended_at - started_at, 0) + max(resumed_at - (launched_at or resumed_at), 0)
    return report


def _replacement(h: history.RunHistory, after: Attempt, node: int | None) -> tuple[str | None, float | None]:
    """The instance that took the interrupted one's place and when it was launched: the next
    attempt's own (attended: the instance's launch; detached: its boot's start), or, for a cluster,
    node K's new member (the attempt itself starts once every node is up again)."""
    if node is None:
        return after.instance_id, _epoch(after.launched_at)
    iid = after.instance_ids[node] if node < len(after.instance_ids) else None
    member = next((m for m in h.members if iid and m.instance_id == iid), None)
    return iid, _epoch(member.launched_at) if member else None


def spot_price(ec2, instance_type: str, zone: str) -> float | None:
    prices = pricing.current_prices(pricing.spot_history(ec2, [instance_type], zones=[zone]))
    return prices.get((instance_type, zone))


def rehearse(
    cfg: AwsConfig,
    name: str,
    node: int | None = None,
    outputs: Path | None = None,
    budgets: Budgets | None = None,
    out: Say = print,
) -> Report:
    """The whole rehearsal; the experiment template is deleted however it ends (the role stays,
    for the next one; `fab cleanup` removes it)."""
    budgets = budgets or Budgets()
    region = account.resolve_region(cfg)
    fis.refuse_region(region)  # before any call: the region alone decides it
    target = find_target(cfg, name, node, outputs, region)
    refuse(target, region)
    caller = account.caller_arn(region, cfg.profile)
    role = fis.ensure_role(aws.client("iam", region, cfg.profile), region, caller, out)
    client = aws.client("fis", region, cfg.profile)
    arn = fis.instance_arn(caller, region, target.instance.instance_id)
    experiment = fis.start(client, arn, role, name, out)
    eid = experiment.experiment_id
    try:
        fis.wait_for(client, eid, ("running", "completed"), budgets.started, out, budgets.poll)
        report = follow(target, experiment.started_at, budgets, out)
        fis.wait_for(client, eid, ("completed",), budgets.ended, out, budgets.poll)
        report.fis_minutes = fis.action_minutes(time.time() - experiment.started_at)
    finally:
        fis.delete_template(client, experiment.template_id)
    ec2 = aws.client("ec2", region, cfg.profile)
    report.price_per_hour = spot_price(ec2, target.instance.instance_type, target.instance.zone)
    return report
