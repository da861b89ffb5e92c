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
"""

from __future__ import annotations

from dataclasses import dataclass

from common.attempt import Attempt, Outcome
from common.times import seconds_between
from ec2.journey.history import RunHistory


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


def rows(h: RunHistory) -> list[Row]:
    out = []
    attempts = h.attempts
    recovering = False  # the last attempt whose trainer ran was interrupted
    for i, a in enumerate(attempts):
        was_recovering = recovering
        if a.outcome not in NEVER_RAN:
            recovering = a.outcome.interrupted
        if a.cost_usd is None or not a.seconds:
            continue
        per_second = a.cost_usd / a.seconds
        recovery = 0.0
        if was_recovering:
            running = _running_from(h, a)
            # Still setting up (counted until now), or setup failed: all its time is recovery.
            whole = running is None and (_at_work(a) or a.outcome in NEVER_RAN)
            ready = a.seconds if whole else seconds_between(a.launched_at, running)
            recovery = per_second * min(max(ready or 0.0, 0.0), a.seconds)
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


def lines(h: RunHistory) -> list[str]:
    """The ledger: one line per attempt that cost something, then the total. None for a cluster:
    its attempts span members that outlive them, which carry the cost."""
    if h.members or h.nodes > 1:
        return []
    table = rows(h)
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
