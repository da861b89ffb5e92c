"""Where a run's dollars went: the ledger of the `fab run` summary (ec2.journey.report), of `fab
watch` and of `fab status` (ec2.journey.standing adapts a detached record or a run.json still
running into the same history). Per attempt of a one-instance run, its cost split into

- recovery: the billed time of an attempt that followed an interruption, from its launch until the
  trainer resumed (or, without a resume line, started): setup, code and checkpoint restore
  (a detached boot records only the start: its checkpoint restore counts as kept);
- recomputed: the steps this attempt ran past its last checkpoint that the next attempt ran again
  (history.RunHistory.steps_lost), at this attempt's dollars per step run;
- kept: the rest, the dollars on steps the run kept (an attempt's own first setup included: a run
  never interrupted pays it too);

and the S3 request dollars the trainer counted for its dataset reads (Attempt.s3_request_usd: the
trainer's own count of its GETs at the list price, ml.data.storage.S3Traffic, read from its
end-of-run log line; the one estimate of them, none is made here).
Pure functions over the run history; an attempt without a cost (price unknown) has no row.

A cluster's attempts (one start of torchrun on every node) carry no cost: its members do, and a
survivor outlives attempts. Its run's time is cut into consecutive windows, one per attempt
(attempt 1 from the first member's launch, attempt k from attempt k-1's end, the last until the
last member ended), and each member's billed seconds are charged, at its own dollars per second, to
the windows they fall in (cluster_attempts): the same rows then, over these window attempts. An
attempt after an interruption recovers from its window's start until its trainer resumed, and every
member billed in that time counts: the survivors wait (and bill) while a replacement launches and
sets up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from common.attempt import Attempt, Outcome
from common.times import seconds_between
from ec2.journey.history import Member, RunHistory


@dataclass
class Row:
    attempt: int
    cost_usd: float
    recovery_usd: float
    recomputed_steps: int
    recomputed_usd: float
    s3_request_usd: float | None
    # Interrupted, and the next attempt is at work without a resume line seen yet (a detached
    # attempt's log reaches S3 when it ends): the steps run again are not known yet.
    recomputed_pending: bool = False

    @property
    def lost_usd(self) -> float:
        return self.recovery_usd + self.recomputed_usd

    @property
    def kept_usd(self) -> float:
        return max(self.cost_usd - self.lost_usd, 0.0)


def _running_from(h: RunHistory, a: Attempt) -> str | None:
    """When the attempt's trainer resumed (or started): the end of its billed recovery. The attempt
    says so itself (Attempt.running_at, written by `fab run` and by a detached boot); a run.json
    written before that field has it only in its events."""
    if a.running_at:
        return a.running_at
    for kind in ("resumed", "started"):
        for e in h.events:
            if e.get("event") != kind:
                continue
            if e.get("attempt") == a.number or (a.instance_id and e.get("instance_id") == a.instance_id):
                return e.get("at")
    return None


def _at_work(a: Attempt) -> bool:
    """Setting up or running (also when ec2.journey.standing has counted its time until now)."""
    return a.outcome.open or a.outcome in (Outcome.STARTING, Outcome.BOOTING)


# Attempts whose trainer never ran: they neither resume a run nor lose steps of it.
NEVER_RAN = (Outcome.LAUNCH_FAILED, Outcome.SETUP_FAILED, Outcome.NOT_STARTED)


def _uniform(a: Attempt, seconds: float) -> float:
    """One instance's attempt: its dollars over its first `seconds`, at its own dollars per second."""
    return a.cost_usd / a.seconds * seconds


def rows(h: RunHistory, first: Callable[[Attempt, float], float] = _uniform) -> list[Row]:
    """A row per attempt that cost something; `first(a, s)`: the dollars of a's first s seconds
    (what its recovery cost): one instance bills evenly, a cluster's window does not (cluster_rows)."""
    out = []
    attempts = h.attempts
    recovering = False  # the last attempt whose trainer ran was interrupted
    for i, a in enumerate(attempts):
        was_recovering = recovering
        if a.outcome not in NEVER_RAN:
            recovering = a.outcome.interrupted
        if a.cost_usd is None or not a.seconds:
            continue
        recovery = 0.0
        if was_recovering:
            running = _running_from(h, a)
            # Still setting up (counted until now), or setup failed: all its time is recovery.
            whole = running is None and (_at_work(a) or a.outcome in NEVER_RAN)
            ready = a.seconds if whole else seconds_between(a.launched_at, running)
            recovery = first(a, min(max(ready or 0.0, 0.0), a.seconds))
        steps, recomputed, pending = 0, 0.0, False
        after = next((b for b in attempts[i + 1 :] if b.outcome not in NEVER_RAN), None)
        if a.outcome.interrupted and after is not None and a.last_step is not None:
            pending = after.resumed_step is None and _at_work(after)
            # No resume line in an attempt that ended: it started afresh and ran every step again.
            steps = 0 if pending else max(a.last_step - (after.resumed_step or 0), 0)
            ran = a.last_step - (a.resumed_step or 0)
            if ran > 0:
                recomputed = min(steps, ran) / ran * max(a.cost_usd - recovery, 0.0)
        out.append(Row(a.number, a.cost_usd, recovery, steps, recomputed, a.s3_request_usd, pending))
    return out


def _at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _billing(members: list[Member]) -> list[tuple[datetime, datetime, float]]:
    """Each priced member's billed span and its own dollars per second (its cost over its time)."""
    out = []
    for m in members:
        if m.cost_usd is not None and m.seconds:
            out.append((_at(m.launched_at), _at(m.ended_at), m.cost_usd / m.seconds))
    return out


def _billed(billing: list[tuple[datetime, datetime, float]], start: datetime, end: datetime) -> float:
    """The dollars every member billed between start and end."""
    return sum(rate * max((min(end, e) - max(start, s)).total_seconds(), 0.0) for s, e, rate in billing)


def cluster_attempts(h: RunHistory) -> list[Attempt]:
    """A cluster's attempts as windows of its run's time, each with the dollars its members billed
    in it (see the module's doc): they add up to the members' cost. Empty while no member is
    priced. A member still billed has no end here: ec2.journey.standing counts it until now."""
    billing = _billing(h.members)
    if not billing or not h.attempts:
        return []
    ends = [e for _, e, _ in billing] + [_at(a.ended_at) for a in h.attempts if a.ended_at]
    starts = [min(s for s, _, _ in billing)]
    for before, a in zip(h.attempts, h.attempts[1:], strict=False):
        at = before.ended_at or a.launched_at
        starts.append(max(_at(at), starts[-1]) if at else starts[-1])
    bounds = [*starts, max(max(ends), starts[-1])]
    return [
        dataclasses.replace(
            a,
            launched_at=start.isoformat(),
            ended_at=end.isoformat(),
            cost_usd=_billed(billing, start, end),
        )
        for a, start, end in zip(h.attempts, bounds, bounds[1:], strict=False)
    ]


def cluster_rows(h: RunHistory) -> list[Row]:
    """rows() over a cluster's windows: an attempt's recovery is what every member billed from
    its window's start until its trainer resumed."""
    billing = _billing(h.members)

    def first(a: Attempt, seconds: float) -> float:
        start = _at(a.launched_at)
        return _billed(billing, start, start + timedelta(seconds=seconds))

    windows = dataclasses.replace(h, attempts=cluster_attempts(h), path=None)
    return rows(windows, first)


def lines(h: RunHistory) -> list[str]:
    """The ledger: one line per attempt that cost something, then the total; a cluster's over its
    members' cost (cluster_rows)."""
    table = cluster_rows(h) if h.members or h.nodes > 1 else rows(h)
    if not table:
        return []
    out = []
    for r in table:
        s3 = "" if r.s3_request_usd is None else f", S3 requests ${r.s3_request_usd:.6f}"
        again = (
            f"recomputed steps not known until attempt {r.attempt + 1} logs its resume"
            if r.recomputed_pending
            else f"{r.recomputed_steps} recomputed steps ${r.recomputed_usd:.4f}"
        )
        out.append(
            f"  ledger attempt {r.attempt}: ${r.kept_usd:.4f} on steps kept, ${r.lost_usd:.4f} lost "
            f"(recovery ${r.recovery_usd:.4f}, {again}){s3}"
        )
    s3s = [r.s3_request_usd for r in table if r.s3_request_usd is not None]
    s3 = f", S3 requests ${sum(s3s):.6f}" if s3s else ""
    kept, lost = sum(r.kept_usd for r in table), sum(r.lost_usd for r in table)
    out.append(
        f"  ledger total: ${kept:.4f} on steps kept, ${lost:.4f} lost to interruptions "
        f"(recovery ${sum(r.recovery_usd for r in table):.4f}, recomputed steps "
        f"${sum(r.recomputed_usd for r in table):.4f}){s3}"
    )
    return out
