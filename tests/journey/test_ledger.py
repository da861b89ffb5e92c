"""The run's ledger in the `fab run` summary (ec2/journey/ledger.py): an interruption's cost is
the replacement's billed time until the trainer resumed plus the steps run again, priced at what
the attempts cost; the rest is on steps kept."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from common.attempt import Attempt, Outcome, RunStatus
from ec2 import status
from ec2.cloud import instances
from ec2.journey import detach, detach_nodes, ledger, report, standing
from ec2.journey.history import Member, RunHistory
from ec2.remote import detached
from tests.peers import prices
from tests.peers.moto_ec2 import config


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


def test_a_replacement_still_setting_up_is_all_recovery_so_far():
    h = interrupted_run()
    h.events = h.events[:1]  # attempt 2 has not started the run yet
    a2 = h.attempts[1]
    # As `fab status` counts it (ec2.journey.standing): three minutes of setup until now, $0.60.
    a2.outcome, a2.ended_at, a2.cost_usd, a2.last_step, a2.resumed_step = (
        Outcome.BOOTING,
        at(13),
        0.6,
        None,
        None,
    )
    assert ledger.lines(h) == [
        "  ledger attempt 1: $1.0000 on steps kept, $0.0000 lost (recovery $0.0000, recomputed steps not "
        "known until attempt 2 logs its resume)",
        "  ledger attempt 2: $0.0000 on steps kept, $0.6000 lost (recovery $0.6000, 0 recomputed steps "
        "$0.0000), S3 requests $0.000123",
        "  ledger total: $1.0000 on steps kept, $0.6000 lost to interruptions (recovery $0.6000, recomputed "
        "steps $0.0000), S3 requests $0.000123",
    ]


def test_a_failed_setup_between_the_interruption_and_the_resume_is_lost_to_it():
    h = interrupted_run()
    a1, a2 = h.attempts
    # A detached group's replacement whose setup failed (a bad disk), then one that resumed at 900.
    failed = Attempt(2, "i-x", "g5.xlarge", "us-east-1b", "spot", at(10), at(13), Outcome.SETUP_FAILED)
    failed.cost_usd = 0.6
    a2.number = 3
    h.attempts, h.events = [a1, failed, a2], [*h.events[:1], {"at": at(12), "event": "resumed", "attempt": 3}]
    assert ledger.lines(h) == [
        # Attempt 1 still lost only the 100 steps past its checkpoint: attempt 3 resumed at 900.
        "  ledger attempt 1: $0.9000 on steps kept, $0.1000 lost (recovery $0.0000, 100 recomputed steps "
        "$0.1000)",
        "  ledger attempt 2: $0.0000 on steps kept, $0.6000 lost (recovery $0.6000, 0 recomputed steps "
        "$0.0000)",
        "  ledger attempt 3: $1.6000 on steps kept, $0.4000 lost (recovery $0.4000, 0 recomputed steps "
        "$0.0000), S3 requests $0.000123",
        "  ledger total: $2.5000 on steps kept, $1.1000 lost to interruptions (recovery $1.0000, recomputed "
        "steps $0.1000), S3 requests $0.000123",
    ]


def test_an_uninterrupted_run_loses_nothing_and_its_setup_counts_as_kept():
    h = interrupted_run()
    h.attempts = h.attempts[:1]
    h.attempts[0].outcome = Outcome.FINISHED
    text = report.summary(h)
    assert "ledger total: $1.0000 on steps kept, $0.0000 lost to interruptions" in text


# --- the same ledger from a detached run's S3 record (fab watch, fab status) and from a run.json
# still running (fab status): ec2.journey.standing adapts both into the history above.

ROOT = "s3://spot-ckpt/runs/job/checkpoint-spotrun-job"
# The trainer's own lines (ml/trainer.py, ml/data/storage.S3Traffic.line), as each boot copies them.
LOG_1 = (
    "Train batch 990: loss 1.21\nTrain batch 1000: loss 1.20\n"
    "stopped by SIGTERM at step 1000; checkpoint saved (resume with resume=auto)\n"
)
LOG_2 = (
    f"resumed from {ROOT}/last.pt at step 900\nTrain batch 1000: loss 1.19\nTrain batch 2000: loss 0.52\n"
    "read from S3: 307 GETs, 0.36 GB, $0.000123 in requests\n"
)


@pytest.fixture
def priced(ec2_client):
    """moto's S3 with the run's bucket; g5.xlarge spot at $6/h in us-east-1a and $12/h in
    us-east-1b, injected as DescribeSpotPriceHistory documents them (moto's price is flat)."""
    boto3.client("s3").create_bucket(Bucket="spot-ckpt")
    prices.inject({("g5.xlarge", "us-east-1a"): 6.0, ("g5.xlarge", "us-east-1b"): 12.0}, {})
    return detach.Detached(config("region=us-east-1"), "job", root=ROOT)


def detached_record(s3, *, second_ended: bool) -> detached.DetachedRun:
    """What the boots write: no cost and no steps (the laptop reads those), each attempt's log in S3
    once it ended, running_at when the boot started the run."""
    a1 = Attempt(1, "i-1", "g5.xlarge", "us-east-1a", "spot", at(0), at(10), Outcome.PREEMPTED)
    a1.running_at, a1.log_uri = at(1), detached.put_text(s3, ROOT, "logs/attempt-1.log", LOG_1)
    a2 = Attempt(2, "i-2", "g5.xlarge", "us-east-1b", "spot", at(10), None, Outcome.RUNNING)
    a2.running_at = at(12)
    if second_ended:
        a2.ended_at, a2.outcome = at(20), Outcome.FINISHED
        a2.log_uri = detached.put_text(s3, ROOT, "logs/attempt-2.log", LOG_2)
    state = detached.DetachedRun(
        name="job", group="spotrun-job", region="us-east-1", root=ROOT, command="true", submitted_at=at(0)
    )
    state.status = RunStatus.FINISHED if second_ended else RunStatus.RUNNING
    state.attempts = [a1, a2]
    detached.save(s3, state)
    return state


def test_a_detached_record_gives_the_ledger_of_the_same_attended_run(priced):
    state = detached_record(priced.s3, second_ended=True)
    # Costs from the spot price history ($1.00, $2.00), steps and S3 requests from the logs in S3,
    # recovery until the boot started the run: the attended run above, line for line.
    assert ledger.lines(priced.history(state)) == ledger.lines(interrupted_run())
    assert "  ledger total: $2.5000 on steps kept, $0.5000 lost to interruptions" in priced.summary(state)


def test_fab_watch_shows_the_ledger_when_an_attempt_ends(priced):
    detached_record(priced.s3, second_ended=False)
    seen: list[str] = []
    detach.watch(priced, out=seen.append, once=True)
    # Attempt 2 runs (its cost until now); it has not logged its resume to S3 yet.
    assert seen[0].startswith("[job] running | attempt 2 of 4")
    assert seen[1] == (
        "  ledger attempt 1: $1.0000 on steps kept, $0.0000 lost (recovery $0.0000, "
        "recomputed steps not known until attempt 2 logs its resume)"
    )
    # Its two minutes from launch to the run's start are the interruption's billed recovery.
    assert re.fullmatch(
        r"  ledger attempt 2: \$[\d.]+ on steps kept, \$0\.4000 lost \(recovery \$0\.4000, .*", seen[2]
    )
    assert seen[3].startswith("  ledger total: ") and len(seen) == 4


def test_fab_status_shows_the_ledger_so_far_of_an_attended_run_on_its_machine(priced, tmp_path):
    h = interrupted_run()
    h.path = str(tmp_path / "run.json")
    a2 = h.attempts[1]
    a2.market, a2.ended_at, a2.cost_usd, a2.outcome = "spot", None, None, Outcome.LEFT_RUNNING
    a2.launched_at = (datetime.now(UTC) - timedelta(minutes=10)).isoformat(timespec="seconds")
    a2.running_at = (datetime.now(UTC) - timedelta(minutes=8)).isoformat(timespec="seconds")
    h.save()  # as `fab run` left it: Ctrl-C, [l]eave running

    shown = standing.attended(priced.ec2, "job", "i-2", outputs=tmp_path)

    assert shown[0] == f"run job ({tmp_path / 'run.json'}): attempt 2 left-running on i-2"
    assert shown[1] == (
        "  ledger attempt 1: $0.9000 on steps kept, $0.1000 lost (recovery $0.0000, "
        "100 recomputed steps $0.1000)"
    )
    # Attempt 2 counted until now at us-east-1b's $12/h: its 2 minutes to resume are $0.40.
    kept = re.fullmatch(
        r"  ledger attempt 2: \$([\d.]+) on steps kept, \$0\.4000 lost \(recovery \$0\.4000, .*", shown[2]
    )
    assert kept and 1.59 < float(kept.group(1)) < 1.7, shown
    assert shown[3].startswith("  ledger total: ")
    # Another machine, or no run.json: nothing.
    assert standing.attended(priced.ec2, "job", "i-9", outputs=tmp_path) == []
    assert standing.attended(priced.ec2, "job", "i-2", outputs=tmp_path / "none") == []


# --- a cluster (`fab run --nodes 2`): its members carry the cost, cut into the attempts' windows.


def cluster_run() -> RunHistory:
    """Two nodes at $6/h each; node 1 noticed at 10:10 and replaced at 10:12 in the cluster's zone
    while node 0 survives; the trainer resumed on both at 10:15 at step 900, finished at 10:30."""
    h = RunHistory(name="job", status=RunStatus.FINISHED, started_at=at(0), finished_at=at(30), nodes=2)
    h.members = [
        Member(0, "i-a", "g5.xlarge", "us-east-1a", "spot", at(0), at(30), Outcome.TERMINATED, 3.0),
        Member(1, "i-b", "g5.xlarge", "us-east-1a", "spot", at(0), at(10), Outcome.LOST, 1.0),
        Member(1, "i-c", "g5.xlarge", "us-east-1a", "spot", at(12), at(30), Outcome.TERMINATED, 1.8),
    ]
    # As the cluster loop records them: attempt 1 from its start (after the launch) until the laptop
    # saw both nodes stop; attempt 2 from the replacement's launch, its trainer resumed at 10:15.
    a1 = Attempt(1, None, "g5.xlarge", "us-east-1a", "spot", at(1), at(10), Outcome.PREEMPTED)
    a1.nodes, a1.instance_ids, a1.nodes_lost, a1.last_step = 2, ["i-a", "i-b"], [1], 1000
    a1.running_at = at(2)
    a2 = Attempt(2, None, "g5.xlarge", "us-east-1a", "spot", at(12), at(30), Outcome.FINISHED)
    a2.nodes, a2.instance_ids, a2.resumed_step, a2.last_step = 2, ["i-a", "i-c"], 900, 2000
    a2.running_at, a2.s3_request_usd = at(15), 0.0001
    a1.gpus = a2.gpus = 1
    h.attempts = [a1, a2]
    return h


def ledger_total(text: str) -> float:
    kept, lost = re.search(r"ledger total: \$([\d.]+) on steps kept, \$([\d.]+) lost", text).groups()
    return float(kept) + float(lost)


def test_a_clusters_ledger_charges_every_member_to_the_attempts_it_served():
    h = cluster_run()
    text = report.summary(h)
    assert ledger.lines(h) == [
        # 10:00-10:10, both first members: $2.00; the 100 steps past the checkpoint at 900 of its
        # 1000 ran again: $0.20.
        "  ledger attempt 1: $1.8000 on steps kept, $0.2000 lost (recovery $0.0000, 100 recomputed steps "
        "$0.2000)",
        # 10:10-10:30: node 0 20 minutes ($2.00), the replacement 18 ($1.80). Recovery until the
        # resume at 10:15: the survivor waited 5 minutes ($0.50) and the replacement set up for 3
        # ($0.30), both lost to the interruption.
        "  ledger attempt 2: $3.0000 on steps kept, $0.8000 lost (recovery $0.8000, 0 recomputed steps "
        "$0.0000), S3 requests $0.000100",
        "  ledger total: $4.8000 on steps kept, $1.0000 lost to interruptions (recovery $0.8000, recomputed "
        "steps $0.2000), S3 requests $0.000100",
    ]
    # The summary prints them after its members' rows; kept + lost is the summary's total.
    assert "  total $5.8000 for 58m00s of instance time" in text
    assert text.endswith("\n".join(ledger.lines(h)))
    assert ledger_total(text) == pytest.approx(h.total_cost_usd) == pytest.approx(5.8)


def test_a_cluster_relaunched_whole_still_adds_up_to_its_members_cost():
    # No capacity for a replacement: node 0 terminated too at 10:11 and both launched anew at
    # 10:13 (the first launched a minute before the second), resumed at 10:16.
    h = cluster_run()
    h.members[0].ended_at, h.members[0].cost_usd = at(11), 1.1
    h.members[2:] = [
        Member(0, "i-d", "g5.xlarge", "us-east-1b", "spot", at(13), at(30), Outcome.TERMINATED, 1.7),
        Member(1, "i-e", "g5.xlarge", "us-east-1b", "spot", at(14), at(30), Outcome.TERMINATED, 1.6),
    ]
    h.attempts[1].launched_at, h.attempts[1].running_at = at(14), at(16)
    text = report.summary(h)
    # Recovery 10:10-10:16: node 0's last minute ($0.10), the new nodes' 3 and 2 minutes ($0.50).
    assert "  ledger attempt 2: $2.8000 on steps kept, $0.6000 lost (recovery $0.6000, " in text
    assert ledger_total(text) == pytest.approx(h.total_cost_usd) == pytest.approx(5.4)


def test_fab_status_shows_a_running_clusters_ledger_so_far_once(priced, tmp_path, monkeypatch):
    # `fab run --nodes 2` left running (Ctrl-C, [l]eave) after the replacement resumed: its members
    # still billed count until now at us-east-1a's $6/h, from the spot price history.
    h = cluster_run()
    h.status, h.finished_at = RunStatus.INTERRUPTED, None
    minutes_ago = lambda n: (datetime.now(UTC) - timedelta(minutes=n)).isoformat(timespec="seconds")  # noqa: E731
    for m, launched in zip(h.members, (30, 30, 18), strict=True):
        m.launched_at = minutes_ago(launched)
    h.members[1].ended_at = h.attempts[0].ended_at = minutes_ago(20)
    h.attempts[0].launched_at, h.attempts[0].running_at = minutes_ago(29), minutes_ago(28)
    h.attempts[1].launched_at, h.attempts[1].running_at = minutes_ago(18), minutes_ago(15)
    for m in (h.members[0], h.members[2]):
        m.ended_at, m.cost_usd, m.outcome = None, None, Outcome.LEFT_RUNNING
    h.attempts[1].ended_at, h.attempts[1].outcome = None, Outcome.LEFT_RUNNING
    monkeypatch.chdir(tmp_path)
    h.path = str(tmp_path / "outputs" / "job" / "run.json")
    (tmp_path / "outputs" / "job").mkdir(parents=True)
    h.save()

    rows = [
        status.Row(
            instances.InstanceInfo(
                iid,
                f"job-{node}",
                "running",
                "g5.xlarge",
                "us-east-1a",
                "spot",
                None,
                None,
                None,
                tags=(("spotrun:cluster", "job"), ("spotrun:node", str(node))),
            ),
            "us-east-1",
            6.0,
            None,
            False,
        )
        for node, iid in ((0, "i-a"), (1, "i-c"))
    ]
    shown = status.run_ledgers(priced.ec2, rows)

    # One block for the run, not one per member.
    assert shown[0] == "run job (outputs/job/run.json): attempt 2 left-running on i-a, i-c"
    assert shown[1].startswith("  ledger attempt 1: $1.8000 on steps kept, $0.2000 lost") and len(shown) == 4
    # Recovery from the interruption (20 minutes ago) to the resume (15): the survivor's 5 minutes
    # and the replacement's 3, at $6/h: $0.80, as at the end.
    recovery = r"  ledger attempt 2: \$[\d.]+ on steps kept, \$0\.8000 lost \(recovery \$0\.8000, "
    assert re.match(recovery, shown[2]), shown
    # Node 0 30 minutes, node 1 10, the replacement 18 until now: about $5.80 so far.
    assert ledger_total(shown[3]) == pytest.approx(5.8, abs=0.05)


def test_a_detached_clusters_ledger_adds_up_to_its_members_cost(priced):
    # What two nodes' boots write for `fab run --detach --nodes 2`: node 1 noticed at 10:10, its
    # group's replacement resumed with node 0 at 10:12 (rank 0's log on node 0, in S3).
    s3 = priced.s3
    for number, log in ((1, LOG_1), (2, LOG_2)):
        detached.put_text(s3, ROOT, f"logs/attempt-{number}-node-0.log", log)
    a1 = Attempt(1, None, "g5.xlarge", "us-east-1a", "spot", at(0), at(10), Outcome.PREEMPTED)
    a1.instance_ids, a1.nodes_lost, a1.running_at = ["i-a", "i-b"], [1], at(1)
    a2 = Attempt(2, None, "g5.xlarge", "us-east-1a", "spot", at(10), at(20), Outcome.FINISHED)
    a2.instance_ids, a2.running_at = ["i-a", "i-c"], at(12)
    state = detached.DetachedRun(
        name="job", group="spotrun-job-0", region="us-east-1", root=ROOT, command="true", submitted_at=at(0)
    )
    state.status, state.nodes, state.attempts = RunStatus.FINISHED, 2, [a1, a2]

    h = detach_nodes.DetachedNodes(priced.cfg, "job", root=ROOT).history(state)

    # At $6/h: node 0 20 minutes, node 1's two instances 10 each: $4.00, the attempts not priced
    # again beside them.
    assert h.total_cost_usd == pytest.approx(4.0)
    assert ledger.lines(h) == [
        "  ledger attempt 1: $1.8000 on steps kept, $0.2000 lost (recovery $0.0000, 100 recomputed steps "
        "$0.2000)",
        # Both nodes billed from 10:10 until the run started at 10:12: $0.40.
        "  ledger attempt 2: $1.6000 on steps kept, $0.4000 lost (recovery $0.4000, 0 recomputed steps "
        "$0.0000)",
        "  ledger total: $3.4000 on steps kept, $0.6000 lost to interruptions (recovery $0.4000, recomputed "
        "steps $0.2000)",
    ]
