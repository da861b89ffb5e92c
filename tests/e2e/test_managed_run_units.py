"""The managed run's pure pieces: the poll command and its parsing, step accounting, the history
file and the summary."""

from __future__ import annotations

import json

from ec2 import history
from ec2.journey import report
from ec2.journey.decide import last_step, parse_poll, poll_command, resumed_step
from ec2.journey.stages import Plan, setup_command, watcher_args


def test_poll_is_one_command_and_parses_each_part():
    line = poll_command("~/spotrun", "train")
    assert line.count("@@spotrun@@") == 3 and '"$HOME"/spotrun/runs/train/preempted' in line
    text = ('preempted\n@@spotrun@@\n{"seconds_notice_to_safe": 2.5}\n@@spotrun@@\n{"action": "terminate"}\n'
            "@@spotrun@@\nTrain batch 11: loss 3\nstopped by SIGUSR1 at step 12; checkpoint saved\n")
    polled = parse_poll(text)
    assert str(polled.state) == "preempted" and polled.preempted == {"seconds_notice_to_safe": 2.5}
    assert polled.notice == {"action": "terminate"} and last_step(polled.log_tail) == 12
    half_written = parse_poll("running\n@@spotrun@@\n{\"sec\n@@spotrun@@\n@@spotrun@@\n")
    assert half_written.preempted is None and half_written.notice is None


def test_steps_from_the_log():
    log = "resumed from s3://b/ckpt/last.pt at step 40\nTrain batch 40: loss 1\nTrain batch 41: loss 1\n"
    assert resumed_step(log) == 40 and last_step(log) == 41
    assert resumed_step("Train batch 1: loss 2") is None and last_step("no numbers here") is None


def test_watcher_args_and_setup_command():
    plan = Plan(command="x", checkpoint_dir="trained_models/x/checkpoint", imds_poll_s=5)
    assert watcher_args(plan, "s3://b/backup") == [
        "--signal", "USR1", "--poll", "5", "--checkpoint-dir", "trained_models/x/checkpoint",
        "--upload-to", "s3://b/backup"]  # fmt: skip
    s3_plan = Plan(command="x", checkpoint_dir="s3://b/ckpt")
    assert "--upload-to" not in watcher_args(s3_plan, "s3://b/backup")
    assert setup_command("~/spotrun", None, False) == (
        'SPOTRUN_REQUIRE_GPU=0 bash "$HOME"/spotrun/code/scripts/setup_instance.sh "$HOME"/spotrun')


def test_history_is_rewritten_whole_after_each_event(tmp_path):
    h = history.RunHistory(name="job", command="python -m ml.train", path=str(tmp_path / "run.json"))
    h.attempts.append(history.Attempt(1, "i-1", "g5.xlarge", "us-east-1a", "spot",
                                      "2026-01-01T00:00:00+00:00", "2026-01-01T00:30:00+00:00",
                                      "preempted", last_step=1210, cost_usd=0.25))
    h.attempts.append(history.Attempt(2, "i-2", "g6.xlarge", "us-east-1b", "spot",
                                      "2026-01-01T00:32:00+00:00", "2026-01-01T01:32:00+00:00",
                                      "finished", resumed_step=1200, cost_usd=0.4))
    h.status = "finished"
    h.event("finished")
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "finished" and data["steps_lost"] == [10]
    assert abs(data["total_cost_usd"] - 0.65) < 1e-9 and data["events"][-1]["event"] == "finished"
    assert history.load(tmp_path / "run.json").attempts[1].resumed_step == 1200
    text = report.summary(h)
    assert "finished after 2 attempt(s)" in text
    assert "attempt 1: g5.xlarge in us-east-1a (spot) i-1 — preempted, 30m00s, $0.2500" in text
    assert "resumed at step 1200" in text
    assert "total cost $0.6500; interruptions 1; steps lost to interruptions 10 (10)" in text
    assert not list(tmp_path.glob(".run.json.*"))  # no temporary files left behind
