"""The run's ledger in the `fab run` summary (ec2/journey/ledger.py): an interruption's cost is
the replacement's billed time until the trainer resumed plus the steps run again, priced at what
the attempts cost; the rest is on steps kept."""

from __future__ import annotations

from common.attempt import Attempt, Outcome, RunStatus
from ec2.journey import report
from ec2.journey.history import RunHistory


def at(minute: int) -> str:
    return f"2026-12-06T10:{minute:02d}:00+00:00"


def interrupted_run() -> RunHistory:
    h = RunHistory(name="job", status=RunStatus.FINISHED, started_at=at(0), finished_at=at(20))
    # Attempt 1: 10 minutes, $1.00, steps 0-1000, interrupted; its last checkpoint was step 900.
    a1 = Attempt(1, "i-1", "g5.xlarge", "us-east-1a", "spot", at(0), at(10), Outcome.PREEMPTED)
    a1.last_step, a1.cost_usd = 1000, 1.0
    # Attempt 2: 10 minutes, $2.00 (on-demand); resumed at step 900 two minutes after its launch.
    a2 = Attempt(2, "i-2", "g5.xlarge", "us-east-1b", "on-demand", at(10), at(20), Outcome.FINISHED)
    a2.last_step, a2.resumed_step, a2.cost_usd, a2.s3_request_usd = 2000, 900, 2.0, 0.000123
    h.attempts = [a1, a2]
    h.events = [
        {"at": at(1), "event": "started", "instance_id": "i-1"},
        {"at": at(12), "event": "resumed", "attempt": 2, "step": 900},
    ]
    return h


def test_summary_splits_the_cost_into_steps_kept_and_lost_to_interruptions():
    text = report.summary(interrupted_run())
    # 100 steps of attempt 1's 1000 ran again: $0.10; attempt 2's 2 of 10 minutes to resume: $0.40.
    assert (
        "  ledger attempt 1: $0.9000 on steps kept, $0.1000 lost (recovery $0.0000, "
        "100 recomputed steps $0.1000)"
    ) in text
    assert (
        "  ledger attempt 2: $1.6000 on steps kept, $0.4000 lost (recovery $0.4000, "
        "0 recomputed steps $0.0000), S3 requests $0.000123"
    ) in text
    assert (
        "  ledger total: $2.5000 on steps kept, $0.5000 lost to interruptions "
        "(recovery $0.4000, recomputed steps $0.1000), S3 requests $0.000123"
    ) in text


def test_an_uninterrupted_run_loses_nothing_and_its_setup_counts_as_kept():
    h = interrupted_run()
    h.attempts = h.attempts[:1]
    h.attempts[0].outcome = Outcome.FINISHED
    text = report.summary(h)
    assert "ledger total: $1.0000 on steps kept, $0.0000 lost to interruptions" in text
