"""The detached run's boot (python -m ec2.remote.boot), run for real as a process against stand-ins:
the IMDS peer for identity and the spot notice, moto's server for S3 and Auto Scaling, a temporary
folder as the machine (its code folder is this repository, as the bundle would unpack it), real
tmux and the real notice watcher, and a stand-in for `shutdown` that records its arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from common.attempt import Attempt, Outcome, RunStatus
from ec2.remote import detached
from ec2.remote.boot import Ending, ending_for, shutdown_argv
from tests.peers.imds import wait_until
from tests.remote.conftest import GROUP, REPO


def test_first_boot_starts_the_run_and_exit_0_finishes_and_stops_the_group(machine):
    outputs = machine.tmp / "outputs"
    machine.submit(
        f"mkdir -p {outputs} && echo metrics > {outputs}/metrics.csv; echo trained fine; exit 0",
        max_hours=2,
        output_dir=str(outputs),
    )
    out = machine.boot_to_end()
    state = machine.state()
    assert state.status == "finished", out
    [a] = state.attempts
    assert (a.number, a.outcome, a.exit_code) == (1, "finished", 0)
    # When the run started, after setup: a recovery's billed time ends there (ec2.journey.ledger).
    # The times are whole seconds, and this command exits at once: equal ends are in order too.
    assert a.launched_at <= a.running_at <= a.ended_at
    assert (a.instance_id, a.instance_type, a.zone, a.market) == (
        machine.imds.instance_id,
        "g5.xlarge",
        "us-east-1a",
        "spot",
    )
    assert machine.desired() == 0
    # Set up as `fab setup` does, started as `fab train` does: in tmux, under the notice watcher.
    assert (machine.remote / "venv" / ".spotrun-setup").exists()
    log = (machine.run_dir() / "log").read_text()
    assert "trained fine" in log and "spot_watch: watching" in log
    assert (machine.run_dir() / "command").read_text().strip().endswith("echo trained fine; exit 0")
    # The trainer's outputs outlive the instance too.
    assert detached.get_ends(machine.s3, f"{detached.outputs_uri(machine.root)}/metrics.csv") == "metrics\n"
    # The log outlives the instance, in S3.
    assert "trained fine" in detached.get_ends(machine.s3, a.log_uri)
    # The instance's own shutdown is scheduled at the time left (2 h, less what has passed).
    [scheduled] = machine.shutdowns()
    minutes = int(scheduled.split()[0].lstrip("+"))
    assert 118 <= minutes <= 120 and "deadline" in scheduled


def test_failing_exit_records_failed_and_stops_the_group(machine):
    machine.submit("echo broken >&2; exit 3")
    machine.boot_to_end()
    state = machine.state()
    assert state.status == "failed"
    assert [(a.outcome, a.exit_code) for a in state.attempts] == [("failed", 3)]
    assert machine.desired() == 0


def test_exit_75_after_a_notice_leaves_the_group_alone(machine):
    # Stands in for the trainer: on the watcher's USR1 it "checkpoints" and exits 75.
    machine.submit(
        "trap 'echo stopped by USR1 at step 12; exit 75' USR1; echo started; echo Train batch 12: loss 1;"
        " while true; do sleep 0.1; done"
    )
    p = machine.boot()
    try:
        log = machine.run_dir() / "log"
        wait_until(lambda: log.exists() and "started" in log.read_text(), 60, "the run to start")
        machine.imds.mark_interruption()
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, out
    state = machine.state()
    assert state.status == "interrupted", out
    assert [(a.outcome, a.exit_code) for a in state.attempts] == [("preempted", 75)]
    preempted = json.loads((machine.run_dir() / "preempted").read_text())
    assert preempted["command_exit_code"] == 75
    assert machine.desired() == 1  # AWS replaces the instance; the next boot resumes
    # The record says what run.json would: when the watcher saw the notice, the seconds to safe,
    # the step the run stopped at (`fab rehearse` times a detached recovery from these).
    [a] = state.attempts
    assert a.notice_seen_at == preempted["seen_at"]
    assert a.seconds_notice_to_safe == preempted["seconds_notice_to_safe"]
    assert a.last_step == 12


def test_next_boot_counts_the_attempt_and_resumes(machine):
    noticed = time.time() - 30
    first = Attempt(1, "i-first", outcome="preempted", exit_code=75, notice_seen_at=noticed, last_step=7)
    go = machine.tmp / "go"
    machine.submit(
        f"echo resumed from {machine.root}/last.pt at step 7; "
        f"while [ ! -e {go} ]; do sleep 0.1; done; exit 0",
        attempts=[first],
        status="interrupted",
    )
    p = machine.boot()
    try:
        # The resume is in the record while the run still runs, as the trainer's log shows it, with
        # the seconds from the previous attempt's notice: what `fab rehearse` and `fab watch` read.
        def resumed():
            attempts = machine.state().attempts
            return attempts[-1] if len(attempts) == 2 and attempts[-1].resumed_step is not None else None

        now = wait_until(resumed, 60, "the resume in the record")
        assert (now.outcome, now.resumed_step) == ("running", 7)
        assert 30 <= now.seconds_notice_to_resumed < 90
        go.touch()
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, out
    state = machine.state()
    assert [(a.number, a.outcome) for a in state.attempts] == [(1, "preempted"), (2, "finished")]
    assert state.status == "finished" and machine.desired() == 0
    assert state.attempts[1].resumed_step == 7


def test_a_record_submitted_by_the_old_code_reads_and_is_written_back_as_the_attempt_record(machine):
    # state.json as the boot wrote it before it used common.attempt: `booted_at`, no launched_at.
    machine.submit("echo resumed; exit 0", status="interrupted")
    bucket, key = detached.key_of(machine.root, detached.STATE_FILE)
    old = json.loads(machine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    booted = "2026-01-01T00:00:00+00:00"
    old["attempts"] = [
        {"number": 1, "instance_id": "i-first", "instance_type": "g5.xlarge", "zone": "us-east-1a",
         "market": "spot", "booted_at": booted, "ended_at": "2026-01-01T00:30:00+00:00",
         "outcome": "preempted", "exit_code": 75, "log_uri": None}
    ]  # fmt: skip
    machine.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(old).encode())
    machine.boot_to_end()
    written = json.loads(machine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    first, second = written["attempts"]
    assert first["launched_at"] == booted and "booted_at" not in first
    assert (first["outcome"], second["outcome"], written["status"]) == ("preempted", "finished", "finished")
    # The same entry `fab run` writes into run.json, so one summary printer reads both.
    assert set(second) == set(Attempt.__dataclass_fields__) and second["launched_at"]
    assert machine.state().attempts[0].seconds == 1800


def test_attempt_past_max_recoveries_stops_the_group_and_shuts_down(machine):
    earlier = [Attempt(n, f"i-{n}", outcome="preempted", exit_code=75) for n in (1, 2)]
    machine.submit("echo never; exit 0", max_recoveries=1, attempts=earlier, status="interrupted")
    out = machine.boot_to_end()
    state = machine.state()
    assert state.status == "gave-up" and state.attempts[-1].outcome == "gave-up", out
    assert "past max_recoveries=1" in out
    assert machine.desired() == 0
    assert machine.shutdowns() == ["now spotrun: attempt 3 is past max_recoveries=1"]
    assert not machine.run_dir().exists()  # nothing was started


def test_boot_past_the_deadline_stops_the_group_and_shuts_down(machine):
    submitted = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat(timespec="seconds")
    machine.submit("echo never; exit 0", max_hours=1.5, submitted_at=submitted)
    out = machine.boot_to_end()
    state = machine.state()
    assert state.status == "deadline" and state.attempts[-1].outcome == "deadline", out
    assert machine.desired() == 0
    [line] = machine.shutdowns()
    assert line.startswith("now ") and "deadline" in line
    assert not machine.run_dir().exists()


def test_deadline_during_the_run_stops_the_trainer_and_the_group(machine):
    submitted = (datetime.now(timezone.utc) - timedelta(hours=1, seconds=-8)).isoformat(timespec="seconds")
    machine.submit(
        # Its stop handler is in place only after 3 s; it says so with its first step. A TERM before
        # it would end the run with 143 and no checkpoint, so the deadline waits for the step.
        "sleep 3; trap 'echo saved on TERM; exit 75' TERM; echo 'step 1'; while true; do sleep 0.1; done",
        max_hours=1,
        submitted_at=submitted,
    )
    out = machine.boot_to_end(timeout=90)
    state = machine.state()
    assert state.status == "deadline", out
    assert [(a.outcome, a.exit_code) for a in state.attempts] == [("deadline", 75)]
    assert "saved on TERM" in (machine.run_dir() / "log").read_text()
    assert machine.desired() == 0


def test_two_boots_failing_setup_in_a_row_stop_the_group(machine):
    machine.submit("echo never; exit 0", setup_python="/nonexistent/python")
    out = machine.boot_to_end()
    state = machine.state()
    assert [a.outcome for a in state.attempts] == ["setup-failed"], out
    assert state.attempts[0].running_at is None  # no run started: all of it was setup
    # One failure may be this machine's: the group gets to try a fresh one.
    assert machine.desired() == 1 and machine.shutdowns()[-1].startswith("now ")
    machine.imds.instance_id = "i-0second0000000000"
    out = machine.boot_to_end()
    state = machine.state()
    assert [a.outcome for a in state.attempts] == ["setup-failed", "setup-failed"], out
    assert state.status == "setup-failed"
    assert machine.desired() == 0
    assert machine.shutdowns()[-1] == "now spotrun: setup failed on two boots in a row"


def test_ending_for_each_exit():
    assert ending_for(0, noticed=False) == Ending("finished", "finished", stop_group=True)
    assert ending_for(75, noticed=True) == Ending("preempted", "interrupted", stop_group=False)
    assert ending_for(75, noticed=False) == Ending("stopped", "stopped", stop_group=True)
    assert ending_for(1, noticed=True) == Ending(Outcome.FAILED, RunStatus.FAILED, stop_group=True)
    assert shutdown_argv("shutdown -h", 90, "why") == ["shutdown", "-h", "+90", "why"]
    assert shutdown_argv("shutdown -h", None, "why") == ["shutdown", "-h", "now", "why"]


def test_a_boot_after_the_run_ended_runs_nothing_and_stops_the_group(machine):
    done = Attempt(1, "i-first", outcome="finished", exit_code=0)
    machine.submit("echo never; exit 0", attempts=[done], status="finished")
    machine.boot_to_end()
    state = machine.state()
    assert state.status == "finished"
    assert [a.outcome for a in state.attempts] == ["finished", "not-started"]
    assert machine.desired() == 0 and machine.shutdowns()[-1].startswith("now ")
    assert not machine.run_dir().exists()


@pytest.mark.parametrize(
    ("record", "said"),
    [(None, "no run record at"), (b'{"name": "job", "gr', "is corrupt (JSONDecodeError")],
    ids=["missing", "corrupt"],
)
def test_a_record_the_boot_cannot_read_stops_the_group_from_here(machine, record, said):
    """max_recoveries lives in the record: a boot that cannot read it gives up at once (desired 0,
    the cause on the group's tag) instead of shutting down for the group to relaunch for ever."""
    from ec2.remote.giveup import GIVEUP_TAG

    if record is not None:
        bucket, key = detached.key_of(machine.root, detached.STATE_FILE)
        machine.s3.put_object(Bucket=bucket, Key=key, Body=record)
    p = machine.boot("--group", GROUP)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 1, out
    assert machine.desired() == 0
    [group] = machine.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    cause = {t["Key"]: t["Value"] for t in group["Tags"]}[GIVEUP_TAG]
    assert said in cause and machine.imds.instance_id in cause
    assert machine.shutdowns()[-1].startswith("now ")


def test_the_boot_imports_only_the_standard_library_boto3_and_the_bundle():
    # The instance runs the boot with its own Python before any venv exists: only boto3 (and what
    # it pulls in) is there beside the bundle's common/ and ec2/ (common.attempt included).
    probe = (
        "import sys; before = set(sys.modules); import ec2.remote.boot; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(' '.join(sorted(new - set(sys.stdlib_module_names))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    allowed = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six", "certifi"}
    assert set(found.stdout.split()) <= allowed | {"common", "ec2", "__mp_main__"}, found.stdout
