"""The attempt record's outcomes are one Enum whose values are the strings run.json has always
held: a run.json written before the Enum loads, its summary reads the same, and writing it back
keeps the strings."""

from __future__ import annotations

import json

from common.attempt import Attempt, Outcome, RunStatus
from ec2.journey import history, report

# A run.json as `fab run` wrote it before the outcomes were an Enum (trimmed to the fields read).
OLD_RUN_JSON = {
    "name": "job",
    "status": "gave-up",
    "started_at": "2026-01-01T00:00:00+00:00",
    "finished_at": "2026-01-01T01:00:00+00:00",
    "attempts": [
        {"number": 1, "instance_id": "i-1", "outcome": "preempted", "last_step": 120},
        {"number": 2, "instance_id": "i-2", "outcome": "lost", "resumed_step": 100, "last_step": 300},
        {"number": 3, "outcome": "launch-failed"},
    ],
    "events": [],
}
OLD_CLUSTER_RUN_JSON = {
    "name": "job",
    "status": "interrupted",
    "nodes": 2,
    "attempts": [{"number": 1, "outcome": "left-running", "nodes": 2}],
    "members": [{"node": 0, "instance_id": "i-1", "outcome": "terminated-by-user"}],
}


def test_an_old_run_json_loads_into_the_enum_and_writes_back_the_same_strings(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(OLD_RUN_JSON))
    h = history.load(path)
    assert h.status is RunStatus.GAVE_UP
    assert [a.outcome for a in h.attempts] == [Outcome.PREEMPTED, Outcome.LOST, Outcome.LAUNCH_FAILED]
    assert "2 interruptions" in report.summary(h)
    assert "lost at step 300" in report.summary(h)  # printed as the string, not Outcome.LOST

    h.save()
    data = json.loads(path.read_text())
    assert data["status"] == "gave-up"
    assert [a["outcome"] for a in data["attempts"]] == ["preempted", "lost", "launch-failed"]

    path.write_text(json.dumps(OLD_CLUSTER_RUN_JSON))
    h = history.load(path)
    assert h.members[0].outcome is Outcome.TERMINATED_BY_USER and h.attempts[0].outcome.open
    assert "i-1  terminated-by-user" in report.summary(h)
    h.save()
    assert json.loads(path.read_text())["members"][0]["outcome"] == "terminated-by-user"


def test_the_detached_boot_writes_the_enums_and_ends_a_run_on_the_same_statuses():
    import inspect

    from ec2.remote import boot

    endings = [boot.ending_for(code, noticed) for code in (0, 1, 75) for noticed in (True, False)]
    assert all(type(e.outcome) is Outcome and type(e.status) is RunStatus for e in endings)
    assert '"not-started"' not in inspect.getsource(boot)  # no bare outcome strings left
    # The statuses the detached record called ended (a boot finding one stops the group).
    assert {s.value for s in RunStatus if s.ended} == {
        "finished", "failed", "stopped", "gave-up", "deadline", "setup-failed"
    }  # fmt: skip


def test_a_detached_record_written_before_the_attempt_record_reads_into_the_summary():
    from ec2.remote.detached import DetachedRun

    old = {
        "name": "job", "group": "spotrun-job", "region": "us-east-1", "root": "s3://b/p",
        "command": "train", "status": "gave-up",
        "attempts": [
            {"number": 1, "instance_id": "i-1", "booted_at": "2026-01-01T00:00:00+00:00",
             "ended_at": "2026-01-01T00:02:05+00:00", "outcome": "preempted", "exit_code": 75,
             "log_uri": "s3://b/p/logs/attempt-1.log"},
        ],
    }  # fmt: skip
    state = DetachedRun.from_json(json.dumps(old))
    assert state.status is RunStatus.GAVE_UP and state.ended
    assert state.attempts[0].outcome is Outcome.PREEMPTED and state.attempts[0].log_uri.endswith(".log")
    h = history.RunHistory(name="job", status=state.status, attempts=state.attempts)
    assert "2m05s" in report.summary(h)  # booted_at is when the attempt's instance began


def test_which_outcomes_count_as_interruptions_and_which_may_still_be_running():
    assert {o for o in Outcome if o.interrupted} == {Outcome.PREEMPTED, Outcome.LOST}
    assert {o for o in Outcome if o.open} == {Outcome.RUNNING, Outcome.LEFT_RUNNING}
    assert Attempt(1, outcome="lost").outcome.interrupted  # a plain string is taken in as the Enum
    attempt = Attempt(2)
    attempt.outcome = "preempted"  # so is one set later
    assert attempt.outcome is Outcome.PREEMPTED
    assert f"{Outcome.GAVE_UP}" == "gave-up" == str(Outcome.GAVE_UP)
