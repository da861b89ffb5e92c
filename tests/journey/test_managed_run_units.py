"""The managed run's pure pieces: the poll command and its parsing, step accounting, the history
file and the summary."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ec2.journey import history, report
from ec2.journey.decide import WATCH, Poll, Verdict, decide, last_step, parse_poll, poll_command, resumed_step
from ec2.journey.stages import Plan, watcher_args
from ec2.remote import runs
from ec2.remote.trainrun import setup_command


def test_poll_is_one_command_and_parses_each_part():
    line = poll_command("~/spotrun", "train")
    assert line.count("@@spotrun@@") == 3 and '"$HOME"/spotrun/runs/train/preempted' in line
    text = (
        'preempted\n@@spotrun@@\n{"seconds_notice_to_safe": 2.5}\n@@spotrun@@\n{"action": "terminate"}\n'
        "@@spotrun@@\nTrain batch 11: loss 3\nstopped by SIGUSR1 at step 12; checkpoint saved\n"
    )
    polled = parse_poll(text)
    assert str(polled.state) == "preempted" and polled.preempted == {"seconds_notice_to_safe": 2.5}
    assert polled.notice == {"action": "terminate"} and last_step(polled.log_tail) == 12
    half_written = parse_poll('running\n@@spotrun@@\n{"sec\n@@spotrun@@\n@@spotrun@@\n')
    assert half_written.preempted is None and half_written.notice is None


def test_steps_from_the_log():
    log = "resumed from s3://b/ckpt/last.pt at step 40\nTrain batch 40: loss 1\nTrain batch 41: loss 1\n"
    assert resumed_step(log) == 40 and last_step(log) == 41
    assert resumed_step("Train batch 1: loss 2") is None and last_step("no numbers here") is None


def test_watcher_args_and_setup_command():
    plan = Plan(command="x", checkpoint_dir="trained_models/x/checkpoint", imds_poll_s=5)
    assert watcher_args(plan, "s3://b/backup") == [
        "--signal",
        "USR1",
        "--poll",
        "5",
        "--checkpoint-dir",
        "trained_models/x/checkpoint",
        "--upload-to",
        "s3://b/backup",
    ]
    s3_plan = Plan(command="x", checkpoint_dir="s3://b/ckpt")
    assert "--upload-to" not in watcher_args(s3_plan, "s3://b/backup")
    assert setup_command("~/spotrun", None, False) == (
        'SPOTRUN_REQUIRE_GPU=0 bash "$HOME"/spotrun/code/scripts/setup_instance.sh "$HOME"/spotrun'
    )


def test_history_is_rewritten_whole_after_each_event(tmp_path):
    h = history.RunHistory(name="job", command="python -m ml.train", path=str(tmp_path / "run.json"))
    h.attempts.append(
        history.Attempt(
            1,
            "i-1",
            "g5.xlarge",
            "us-east-1a",
            "spot",
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:30:00+00:00",
            "preempted",
            last_step=1210,
            cost_usd=0.25,
        )
    )
    h.attempts.append(
        history.Attempt(
            2,
            "i-2",
            "g6.xlarge",
            "us-east-1b",
            "spot",
            "2026-01-01T00:32:00+00:00",
            "2026-01-01T01:32:00+00:00",
            "finished",
            resumed_step=1200,
            cost_usd=0.4,
        )
    )
    h.status = "finished"
    h.event("finished")
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "finished" and data["steps_lost"] == [10]
    assert abs(data["total_cost_usd"] - 0.65) < 1e-9 and data["events"][-1]["event"] == "finished"
    assert history.load(tmp_path / "run.json").attempts[1].resumed_step == 1200
    h.started_at, h.finished_at = "2026-01-01T00:00:00+00:00", "2026-01-01T01:33:00+00:00"
    lines = report.summary(h).splitlines()
    assert lines[0] == "run job: finished after 2 attempts on 2 instances"
    assert lines[1].split() == [
        "attempt",
        "1",
        "g5.xlarge",
        "us-east-1a",
        "spot",
        "i-1",
        "preempted",
        "at",
        "step",
        "1210",
        "30m00s",
        "$0.2500",
    ]
    assert "resumed at step 1200, finished" in lines[2] and lines[2].endswith("1h00m00s  $0.4000")
    assert len(lines[1]) == len(lines[2])  # the columns line up
    assert lines[3] == (
        "  total $0.6500 for 1h30m00s of instance time (1h33m00s wall clock); "
        "1 interruption, steps lost to interruptions 10"
    )
    assert not list(tmp_path.glob(".run.json.*"))  # no temporary files left behind


def _poll(state: str, code: int | None = None) -> Poll:
    return Poll(runs.RunState(state, code), None, None, "")


def test_verdicts_on_each_kind_of_end():
    look = dict(noticed=False, unreachable_for=None, unreachable_s=300)
    assert decide("running", _poll("running"), **look) == WATCH
    assert decide("running", _poll("finished", 0), **look).end == "finished"
    failed = decide("running", _poll("finished", 3), **look)
    assert failed.end == "failed" and "exit 3" in failed.why
    # Stopped resumably with no notice (a TERM from elsewhere): relaunch, recorded as lost.
    assert decide("running", _poll("finished", 75), **look) == Verdict(
        "interrupted", "the command stopped resumably (exit 75)", "lost"
    )
    assert decide("running", _poll("preempted"), **look).outcome == "preempted"
    # The instance vanished: nothing can be pulled from it.
    for state in ("shutting-down", "terminated", "stopped", "gone"):
        v = decide(state, None, **look)
        assert (v.end, v.outcome, v.reachable) == ("interrupted", "lost", False), state
    after_notice = decide("terminated", None, **{**look, "noticed": True})
    assert after_notice.outcome == "preempted" and "after a spot interruption notice" in after_notice.why
    assert decide("running", _poll("none"), **look).why.startswith("the run is gone")
    # SSH silent while AWS says running: patience up to unreachable_s, then a relaunch.
    assert decide("running", None, **{**look, "unreachable_for": 299}) == WATCH
    assert decide("running", None, **{**look, "unreachable_for": 301}).reachable is False
    # A finished run wins over an instance AWS is already taking down.
    assert decide("shutting-down", _poll("finished", 0), **look).end == "finished"


def test_attempt_cost_integrates_a_seeded_spot_history_else_the_on_demand_price(no_aws):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    a = history.Attempt(
        1,
        "i-1",
        "g4dn.xlarge",
        "us-east-1a",
        "spot",
        t0.isoformat(),
        (t0 + timedelta(minutes=30)).isoformat(),
        "preempted",
    )
    # $0.20/h in effect at launch, $0.30/h from minute 10: 10 min at 0.20 + 20 min at 0.30.
    points = [(t0 - timedelta(hours=1), 0.20), (t0 + timedelta(minutes=10), 0.30)]
    assert report.attempt_cost(a, points) == pytest.approx(0.20 / 6 + 0.30 / 3)
    # No spot history came back: the on-demand list price is the honest upper bound (here, with no
    # AWS to ask the Pricing API, the table's figure).
    assert report.attempt_cost(a, []) == pytest.approx(0.526 / 2)
    unknown = history.Attempt(
        2, "i-2", "x9.huge", "us-east-1a", "spot", t0.isoformat(), (t0 + timedelta(minutes=30)).isoformat()
    )
    assert report.attempt_cost(unknown, []) is None
    assert report.attempt_cost(history.Attempt(3, instance_type="g5.xlarge"), points) is None


def test_summary_of_a_seeded_spot_run_names_each_cost_and_the_total():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    points = [(t0 - timedelta(hours=1), 0.20), (t0 + timedelta(minutes=10), 0.30)]
    h = history.RunHistory(name="job", status="gave-up")
    for n, (start, end) in enumerate([(0, 30), (35, 50)], 1):
        at = [(t0 + timedelta(minutes=m)).isoformat() for m in (start, end)]
        a = history.Attempt(
            n,
            f"i-{n}",
            "g4dn.xlarge",
            "us-east-1a",
            "spot",
            *at,
            "lost",
            last_step=100 * n,
            resumed_step=90 if n == 2 else None,
        )
        a.cost_usd = report.attempt_cost(a, points)
        h.attempts.append(a)
    text = report.summary(h)
    # 10 min at $0.20/h + 20 min at $0.30/h = $0.1333; then 15 min at $0.30/h = $0.0750.
    assert "$0.1333" in text.splitlines()[1] and "$0.0750" in text.splitlines()[2]
    total = next(line for line in text.splitlines() if line.startswith("  total"))
    assert total.startswith("  total $0.2083 for 45m00s of instance time; 2 interruptions")
    assert total.endswith("steps lost to interruptions 10")


def test_summary_of_a_run_whose_launch_failed():
    attempt = history.Attempt(1, outcome="launch-failed")
    h = history.RunHistory(name="job", status="failed", attempts=[attempt])
    assert report.summary(h).splitlines() == [
        "run job: failed after 1 attempt on 0 instances",
        "  attempt 1  -  -  -  -  launch-failed  -  -",
        "  total ? for ? of instance time; 0 interruptions, steps lost to interruptions 0",
    ]
