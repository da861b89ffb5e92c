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


def test_every_outcome_the_detached_boot_writes_is_one_of_the_enum():
    # detach.py reads the boot's S3 record into the attempt record (its summary and `fab watch`).
    import inspect

    from ec2.remote import boot, detached

    written = {"booting", "lost", "running", "not-started"} | set(detached.ENDED)
    written |= {boot.ending_for(code, noticed).outcome for code in (0, 1, 75) for noticed in (True, False)}
    assert written <= {o.value for o in Outcome}, written - {o.value for o in Outcome}
    assert '"not-started"' in inspect.getsource(boot)  # the one literal outcome not in those sets


def test_which_outcomes_count_as_interruptions_and_which_may_still_be_running():
    assert {o for o in Outcome if o.interrupted} == {Outcome.PREEMPTED, Outcome.LOST}
    assert {o for o in Outcome if o.open} == {Outcome.RUNNING, Outcome.LEFT_RUNNING}
    assert Attempt(1, outcome="lost").outcome.interrupted  # a plain string is taken in as the Enum
    attempt = Attempt(2)
    attempt.outcome = "preempted"  # so is one set later
    assert attempt.outcome is Outcome.PREEMPTED
    assert f"{Outcome.GAVE_UP}" == "gave-up" == str(Outcome.GAVE_UP)
