"""A run's ledger as it stands now, for `fab watch` and `fab status`: a detached run's S3 record
(ec2.remote.detached) and an attended run's outputs/<name>/run.json hold the same attempts
(common.attempt); here they become the RunHistory the `fab run` summary reads, the attempt still
at work counted until now, so that one module (ec2.journey.ledger) does the arithmetic for every
kind of run. A cluster's attempts carry no cost of their own: its members do, each one still
billed counted until now too (the ledger cuts their cost into the attempts' windows)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common.attempt import Attempt
from common.times import now_iso
from ec2 import paths
from ec2.journey import history, ledger, report
from ec2.journey.decide import resumed_step
from ec2.journey.engine import note_step
from ec2.remote import detached


def still_billed(a: Attempt) -> bool:
    """No end recorded and its instance still at work: setting up, running, or left running."""
    return a.ended_at is None and (a.unended or a.outcome.open)


def until_now(h: history.RunHistory, ec2) -> history.RunHistory:
    """h (changed in place) with each attempt (and cluster member) still billed counted until now,
    and the cost of each, where the history has none, from the spot price history
    (report.fetch_cost). A cluster's attempts are not priced: its members carry its cost, and
    the summary's total adds both."""
    now = now_iso()
    h.attempts = [
        dataclasses.replace(a, ended_at=now, cost_usd=None) if still_billed(a) else a for a in h.attempts
    ]
    h.members = [
        dataclasses.replace(m, ended_at=now, cost_usd=None) if m.ended_at is None and m.outcome.open else m
        for m in h.members
    ]
    cluster = h.members or h.nodes > 1
    for x in h.members if cluster else h.attempts:
        if x.cost_usd is None:
            x.cost_usd = report.fetch_cost(ec2, x)
    return h


def note_logs(s3, attempts: list[Attempt]) -> None:
    """A detached attempt's last step, the step it resumed at and its S3 reads, from the run log its
    boot copied to S3 when it ended (Attempt.log_uri): its two ends (detached.get_ends), read as
    `fab run` reads a log's tail."""
    for a in attempts:
        text = detached.get_ends(s3, a.log_uri) if a.log_uri else None
        if not text:
            continue  # still running (its log is copied at its end), or the copy failed
        note_step(a, text)
        if a.resumed_step is None:
            a.resumed_step = resumed_step(text)


def attended(ec2, name: str, instance_id: str, outputs: Path | None = None) -> list[str]:
    """`fab status` for a machine that runs an attended `fab run`: a line naming the run, then its
    ledger so far, when outputs/<name>/run.json has an attempt still at work on this instance (for
    a cluster's member, `name` is the cluster's: ec2.status.run_ledgers)."""
    path = history.history_path(outputs or paths.outputs_dir(name))
    if not path.is_file():
        return []
    try:
        h = history.load(path)
    except (ValueError, TypeError, KeyError) as e:  # written by hand, or by a much older spotrun
        return [f"run {name}: {path} could not be read ({type(e).__name__}: {e}); no ledger"]
    here = [a for a in h.attempts if still_billed(a) and instance_id in (a.instance_id, *a.instance_ids)]
    if not here:
        return []
    a = here[-1]
    on = ", ".join(a.instance_ids) if h.members or h.nodes > 1 else instance_id  # a cluster: every node
    rows = ledger.lines(until_now(h, ec2))
    return [f"run {name} ({path}): attempt {a.number} {a.outcome} on {on}", *rows] if rows else []
