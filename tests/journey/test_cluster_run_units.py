"""The decisions and the report of `fab run --nodes N`: pure functions, no peers."""

from __future__ import annotations

import pytest

from ec2.errors import ConfigError
from ec2.journey import history, report
from ec2.journey.cluster_loop import ClusterJourney
from ec2.journey.decide import Poll, cluster_verdict, decide, node_status, notice_to_resumed
from ec2.journey.stages import Plan
from ec2.remote.runs import RunState


def _poll(state: str, code: int | None = None, notice: dict | None = None) -> Poll:
    return Poll(RunState(state, code), None, notice, "")


def _status(aws_state: str, polled: Poll | None, noticed: bool = False, unreachable_for=None) -> str:
    verdict = decide(aws_state, polled, noticed=noticed, unreachable_for=unreachable_for, unreachable_s=60)
    return node_status(verdict, polled, noticed)


def test_node_status_tells_a_survivor_from_a_lost_node():
    assert _status("running", _poll("running")) == "running"
    assert _status("running", _poll("finished", 0)) == "finished"
    assert _status("running", _poll("finished", 1)) == "failed"
    # Exit 75 with no notice on it, machine still there: stopped because another node was lost.
    assert _status("running", _poll("finished", 75)) == "stopped"
    # The notice was on this node: it goes, whatever its run says.
    assert _status("running", _poll("preempted"), noticed=True) == "lost"
    assert _status("running", _poll("finished", 75), noticed=True) == "lost"
    assert _status("terminated", None, noticed=True) == "lost"
    assert _status("shutting-down", None) == "lost"
    assert _status("gone", None) == "lost"
    assert _status("running", _poll("none")) == "lost"  # its run vanished (rebooted)
    assert _status("running", None, unreachable_for=30) == "running"  # not yet overdue
    assert _status("running", None, unreachable_for=61) == "lost"


@pytest.mark.parametrize(
    ("statuses", "end", "lost"),
    [
        (["running", "running"], "watch", ()),
        (["finished", "running"], "watch", ()),  # rank 0's node may end first
        (["running", "lost"], "waiting", (1,)),  # wait until every run has ended
        (["stopped", "running"], "waiting", ()),
        (["failed", "running"], "waiting", ()),
        (["stopped", "lost"], "interrupted", (1,)),
        (["lost", "lost", "stopped"], "interrupted", (0, 1)),
        # A lost node makes the others' collectives fail: that is no failure of the command.
        (["failed", "lost"], "interrupted", (1,)),
        (["failed", "stopped"], "failed", ()),
        (["finished", "finished"], "finished", ()),
        (["stopped", "stopped"], "interrupted", ()),  # stopped resumably, nothing lost: restart
    ],
)
def test_cluster_verdict(statuses, end, lost):
    verdict = cluster_verdict(statuses)
    assert (verdict.end, verdict.lost) == (end, lost)


def test_cluster_verdict_names_the_nodes():
    assert cluster_verdict(["stopped", "lost", "lost"]).why == "node 1, 2 lost"
    assert cluster_verdict(["finished", "failed"]).why == "the command failed on node 1"


def test_notice_to_resumed():
    assert notice_to_resumed(1000.0, 1012.34) == 12.3
    assert notice_to_resumed(None, 1012.0) is None  # lost without a notice: nothing to measure
    assert notice_to_resumed(1000.0, 999.0) == 0.0  # clocks a little apart never go negative


def test_a_cluster_run_needs_its_checkpoints_in_s3_before_anything_is_launched(tmp_path):
    for where in (None, "trained_models/x/checkpoint"):
        plan = Plan(command="x", checkpoint_dir=where, train_config="configs/demo.yaml")
        with pytest.raises(ConfigError, match="multi-node run keeps its checkpoints in S3"):
            ClusterJourney(None, "job", plan, 2, outputs=tmp_path)


def test_cluster_summary_counts_members_nodes_lost_steps_lost_and_notice_to_resumed(tmp_path):
    t0, t1, t2 = "2026-01-01T00:00:00+00:00", "2026-01-01T00:10:00+00:00", "2026-01-01T00:30:00+00:00"
    h = history.RunHistory(name="job", nodes=2, started_at=t0, finished_at=t2, status="finished")
    h.attempts = [
        history.Attempt(1, outcome="preempted", last_step=120, nodes_lost=[1], gpus=4, nodes=2),
        history.Attempt(
            2, outcome="finished", resumed_step=120, last_step=500, gpus=4, seconds_notice_to_resumed=95.5
        ),
    ]
    h.members = [
        history.Member(0, "i-a", "p4d.24xlarge", "us-east-1a", "spot", t0, t2, "terminated", 3.0),
        history.Member(1, "i-b", "p4d.24xlarge", "us-east-1a", "spot", t0, t1, "lost", 1.0),
        history.Member(1, "i-c", "p4d.24xlarge", "us-east-1a", "spot", t1, t2, "terminated", 2.0),
    ]
    text = report.summary(h)
    lines = text.splitlines()
    assert lines[0] == "run job: finished after 2 attempts on 2 nodes x 4 GPUs per node (3 instances)"
    assert lines[2].split() == [
        "node",
        "1",
        "p4d.24xlarge",
        "us-east-1a",
        "spot",
        "i-b",
        "lost",
        "10m00s",
        "$1.0000",
    ]
    assert "attempt 1: preempted at step 120; node 1 lost" in text
    assert "attempt 2: resumed at step 120, finished; 95.5 s from the notice to resumed" in text
    # The totals, then the ledger (tests/journey/test_ledger.py).
    assert next(line for line in lines if line.startswith("  total ")) == (
        "  total $6.0000 for 1h00m00s of instance time (30m00s wall clock); nodes lost 1, "
        "steps lost to interruptions 0, notice to resumed 95.5 s"
    )
    assert h.total_cost_usd == 6.0
    # run.json reads back whole: members, nodes lost, notice to resumed.
    h.path = str(tmp_path / "run.json")
    h.save()
    back = history.load(tmp_path / "run.json")
    assert back.members == h.members and back.attempts == h.attempts and back.nodes == 2
    assert report.summary(back) == text


def test_summary_of_a_cluster_whose_launch_failed_is_a_cluster_summary():
    # The engine records a failed launch as an attempt for every fleet; a cluster's has no member.
    h = history.RunHistory(name="job", nodes=2, status="failed")
    h.attempts = [history.Attempt(1, outcome="launch-failed")]
    text = report.summary(h)
    assert text.startswith("run job: failed after 1 attempt on 2 nodes x ? per node (0 instances)")
    assert "  attempt 1: launch-failed" in text
