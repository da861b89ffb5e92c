"""The boot of a detached run: runs (as root) at every launch of every instance of the run's Auto
Scaling group, from the code bundle the user data fetched, and keeps the run going with no laptop:

    python -m ec2.remote.boot --root s3://bucket/prefix --group spotrun-NAME [--shutdown 'shutdown -h']
        [--poll 5]

1. reads the run's record from S3 (ec2.remote.detached) and counts this attempt; a record that
   cannot be read (refused, missing, corrupt) gives up at once (ec2.remote.giveup: the group's
   desired capacity to 0, the cause on its tag), since the guards below live in that record;
2. guards the cost: past max_recoveries, or past the run's deadline (max_hours from submit), it
   sets the group's desired capacity to 0 and shuts the instance down; otherwise it schedules the
   instance's own shutdown at the time left;
3. sets up the venv over the AMI's PyTorch, with the same command as `fab setup`; two boots in a
   row that fail here stop the group (no crash loop of paid instances), one shuts down so the
   group tries a fresh instance;
4. starts the run as the login user in tmux, wrapped in the notice watcher, the one way every run
   starts (ec2.remote.startrun): the trainer on every GPU here under torchrun (or --gpus of them),
   so `fab logs`/`attach`/`status` work on it and a notice stops every rank at one step;
5. waits for the run's exit code, copies its log to S3, and ends the attempt:
   exit 0 → `finished`, desired 0; exit 75 after a spot notice → `preempted`, the group is left
   alone (AWS replaces the instance and the next boot resumes from the S3 checkpoint); exit 75 on
   `fab stop` (no notice) → `stopped`, desired 0; any other exit → `failed`, desired 0.
6. keeps the run's budget (ec2.remote.spend; docs/budget.md "Detached runs"): max_cost_usd before
   the attempt (at or over it: nothing starts, `stopped`, desired 0) and every few minutes during
   it (reached: the trainer is asked to checkpoint and stop, as on the deadline; `stopped`, desired
   0); on_demand_after (the K-th interruption switches the group to on-demand before this instance
   goes, so AWS's replacement is on-demand); the config's deadline (the finish projected from the
   measured step time misses it: the group is switched to on-demand for the next attempt). Each is
   logged and recorded in the record's events, which `fab watch` prints.

Identity and region come from the metadata service (SPOTRUN_IMDS_URL), S3 and Auto Scaling
through the instance role: no credentials travel. Standard library, boto3 and common/ only.
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from common import aws
from common.attempt import Attempt, Outcome, RunStatus
from common.errors import STOPPED_RESUMABLE as RESUMABLE_EXIT
from common.errors import ToolkitError
from common.s3uri import is_s3
from common.times import now_iso
from ec2.remote import attempt_notes, detached, giveup, runs, s3copy, spend, startrun
from ec2.remote.detached import DetachedRun
from ec2.remote.imds import Identity, Imds, ImdsUnreachable
from ec2.remote.runs import code_dir
from ec2.remote.ssh import join_path
from ec2.remote.startrun import Local
from ec2.remote.trainrun import setup_command, train_env

DEFAULT_SHUTDOWN = "shutdown -h"
START_TRIES = 3
# How long the deadline waits for a trainer that has logged no step yet (see trainer_can_stop).
STOP_GRACE_S = 120.0


def log(msg: str) -> None:
    print(f"spotrun boot: {msg}", file=sys.stderr, flush=True)


def local_path(path: str, user: str) -> Path:
    """A remote_dir-style path (`~/spotrun`) as the login user sees it: the HOME as_user's shell
    has (the inherited one when the boot already runs as that user)."""
    if path == "~" or path.startswith("~/"):
        home = os.path.expanduser("~") if user == getpass.getuser() else pwd.getpwnam(user).pw_dir
        return Path(home) / path[2:]
    return Path(path)


def shutdown_argv(shutdown: str, minutes: int | None, why: str) -> list[str]:
    """`shutdown -h +N why` (scheduled; a later call replaces it) or `shutdown -h now why`."""
    return [*shlex.split(shutdown), f"+{minutes}" if minutes is not None else "now", why]


@dataclass
class Ending:
    outcome: Outcome  # the attempt's outcome
    status: RunStatus  # the run's status after it
    stop_group: bool  # set desired capacity to 0
    shut_down: bool = False  # and shut this instance down now


def ending_for(exit_code: int, noticed: bool) -> Ending:
    """What an attempt's end means for the run and the group (a pure function: tests read it)."""
    if exit_code == 0:
        return Ending(Outcome.FINISHED, RunStatus.FINISHED, stop_group=True)
    if exit_code == RESUMABLE_EXIT and noticed:
        # AWS takes the instance back and the group launches another: leave it alone.
        return Ending(Outcome.PREEMPTED, RunStatus.INTERRUPTED, stop_group=False)
    if exit_code == RESUMABLE_EXIT:
        return Ending(Outcome.STOPPED, RunStatus.STOPPED, stop_group=True)
    return Ending(Outcome.FAILED, RunStatus.FAILED, stop_group=True)


class Boot:
    def __init__(
        self,
        root: str,
        identity: Identity,
        *,
        shutdown: str,
        poll_s: float,
        s3=None,
        asg=None,
        group: str | None = None,
        ec2=None,
        cost_every_s: float = spend.COST_EVERY_S,
    ):
        region = identity.region
        self.root = root
        self.group = group  # from the user data: known even when the record cannot be read
        self.me = identity
        self.shutdown = shutdown
        self.poll_s = poll_s
        self.s3 = s3 or aws.client("s3", region)
        self.asg = asg or aws.client("autoscaling", region)
        self.ec2 = ec2 or aws.client("ec2", region)
        self.state: DetachedRun | None = None
        self.attempt: Attempt | None = None
        self.budget = spend.Keeper(self, cost_every_s, log)

    # --- the record ---------------------------------------------------------------------------------
    def save(self) -> None:
        detached.save(self.s3, self.state)

    def refresh_stop(self) -> None:
        """`fab stop` writes stop_requested into the record while we run: read it back."""
        fresh = detached.load(self.s3, self.root)
        if fresh is not None and fresh.stop_requested:
            self.state.stop_requested = True

    def note(self, kind: str, line: str, **fields) -> None:
        """Log a budget decision and record it in the record's events (where `fab watch` shows it)."""
        log(line)
        spend.event(self.state, kind, line, attempt=self.attempt.number if self.attempt else None, **fields)
        self.refresh_stop()  # a `fab stop` written since is kept
        self.save()

    # --- the group and the machine ------------------------------------------------------------------
    def stop_group(self, why: str) -> None:
        log(f"{why}: setting desired capacity of {self.state.group} to 0")
        try:
            self.asg.set_desired_capacity(
                AutoScalingGroupName=self.state.group, DesiredCapacity=0, HonorCooldown=False
            )
        except botocore.exceptions.ClientError as e:
            # Shutting down still ends this instance; the next boot finds the run ended and tries again.
            log(f"could not set desired capacity ({aws.error_code(e)}): {e}")

    def shut_down(self, minutes: int | None, why: str) -> None:
        argv = shutdown_argv(self.shutdown, minutes, why)
        log(f"{why}: {' '.join(argv)}")
        subprocess.run(argv, check=False)

    def end(self, outcome: Outcome, status: RunStatus, why: str, *, stop_group: bool, shut_down: bool) -> int:
        self.attempt.outcome = outcome
        self.attempt.ended_at = now_iso()
        self.state.status = status
        self.save()
        if stop_group:
            self.stop_group(why)
        if shut_down:
            self.shut_down(None, f"spotrun: {why}")
        return 0

    # --- the stages ---------------------------------------------------------------------------------
    def begin(self) -> str | None:
        """Count this attempt; None to go on, or why the run must not go on."""
        s = self.state
        previous = s.attempts[-1] if s.attempts else None
        self.attempt = Attempt(
            number=len(s.attempts) + 1,
            instance_id=self.me.instance_id,
            instance_type=self.me.instance_type,
            zone=self.me.zone,
            market=self.me.market,
            launched_at=now_iso(),  # the boot's start: the instance has been billed for a moment
            outcome=Outcome.BOOTING,
        )
        s.attempts.append(self.attempt)
        if s.ended:
            return f"the run already ended ({s.status})"
        if s.stop_requested:
            s.status = RunStatus.STOPPED
            return "a stop was requested"
        if self.attempt.number > s.max_attempts:
            s.status = RunStatus.GAVE_UP
            return f"attempt {self.attempt.number} is past max_recoveries={s.max_recoveries}"
        if s.seconds_left() <= 0:
            s.status = RunStatus.DEADLINE
            when = s.deadline.isoformat(timespec="seconds")
            return f"the run's deadline ({when}, max_hours={s.max_hours:g}) passed"
        over = self.budget.before()
        if over is not None:
            s.status = RunStatus.STOPPED
            spend.event(s, "stopped", over, attempt=self.attempt.number, why="max_cost_usd")
            return over
        if previous is not None and previous.outcome is Outcome.BOOTING:
            # The previous boot died without recording an end (instance lost mid-setup): not a
            # setup failure we can prove, so it only shows in the history.
            previous.outcome = Outcome.LOST
        return None

    def setup(self) -> bool:
        s = self.state
        log(f"setup: {setup_command(s.remote_dir, s.setup_python, s.require_gpu)}")
        result = startrun.setup(Local(s.login_user), s.remote_dir, s.setup_python, s.require_gpu)
        if result.code == 0:
            return True
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        log(f"setup failed (exit {result.code}): {' | '.join(tail)}")
        return False

    def spec(self) -> startrun.RunSpec:
        """The run as `fab run` starts it: the trainer on every GPU here (or --gpus of them)."""
        s = self.state
        return startrun.RunSpec(
            run=s.run,
            command=None if s.train_config is not None else s.command,
            train_config=s.train_config,
            overrides=tuple(s.overrides),
            gpus=s.gpus,
            watcher_args=tuple(s.watcher_args),
            # As fab run does (stages.run_env): the region this instance runs in.
            env={**s.env, **train_env(self.me.region)},
            output_dir=s.output_dir,
            force=True,  # a reboot of this instance, or a rerun of the boot, restarts the run
        )

    def start(self) -> Path | None:
        s = self.state
        here = Local(s.login_user)
        for attempt in range(START_TRIES):
            try:
                started = startrun.start(here, s.remote_dir, self.spec())
            except ToolkitError as e:
                # tmux can lose a race with a server that is still exiting ("server exited
                # unexpectedly"): a moment later a new server starts. (--gpus past the GPUs
                # here fails the same way each time: the tries run out, setup_failed.)
                log(f"starting the run failed: {str(e)[-300:]}")
                time.sleep(1 + attempt)
                continue
            on = f" on {started.procs} GPUs (torchrun)" if started.procs > 1 else ""
            log(f"started run {s.run!r} in tmux ({runs.session_name(s.run)}){on}")
            return local_path(started.run_dir, s.login_user)
        return None

    def wait(self, run_dir: Path) -> int:
        """Until the run's exit code is written; on the deadline, the trainer is told to stop."""
        code_file = run_dir / "exit_code"
        signalled = False
        began = time.monotonic()
        resume = attempt_notes.ResumeWatch(run_dir / "log")
        before = self.state.attempts[-2] if len(self.state.attempts) > 1 else None
        while not code_file.exists():
            # A detached cluster's member boot (boot_nodes) owns no attempt of the record: none to note.
            if self.attempt is not None and resume.check(self.attempt, before):
                self.save_resume()
            if not signalled and self.state.seconds_left() <= 0 and self.trainer_can_stop(run_dir, began):
                self.state.status = RunStatus.DEADLINE
                # Until the watcher has written its pid (a run that just started), try again.
                signalled = self.signal_trainer()
                if signalled:
                    log("the run's deadline passed: asked the trainer to checkpoint and stop")
            self.budget.poll(run_dir)
            if not signalled and self.budget.reached:
                # As on the deadline: the trainer saves its checkpoint and exits 75.
                signalled = self.signal_trainer()
            time.sleep(self.poll_s)
        return int(code_file.read_text().strip())

    def trainer_can_stop(self, run_dir: Path, began: float) -> bool:
        """Whether the deadline's stop may be sent now: once the trainer has logged a step (before
        it, it has no stop handler yet: TERM would kill it with exit 143 and no checkpoint), or
        when it has logged none for STOP_GRACE_S (stuck before training: TERM is all there is)."""
        if time.monotonic() - began >= STOP_GRACE_S:
            return True
        return runs.last_step(spend.tail(run_dir / "log")) is not None

    def save_resume(self) -> None:
        """The resume into the record now (`fab rehearse` follows it there); S3 failing here must
        not end the boot's watch of a running trainer: the attempt's end saves it again."""
        try:
            self.refresh_stop()
            self.save()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            log(f"could not save the resume to the record now ({e}); it is saved when the attempt ends")

    def signal_trainer(self) -> bool:
        line = runs.graceful_stop_command(self.state.remote_dir, self.state.run)
        return Local(self.state.login_user).sh(line).code == 0

    def keep_log(self, run_dir: Path) -> None:
        log_file = run_dir / "log"
        if log_file.is_file():
            text = log_file.read_text(errors="replace")
            self.attempt.log_uri = detached.put_text(
                self.s3, self.root, f"logs/attempt-{self.attempt.number}.log", text
            )

    def keep_outputs(self) -> None:
        """The trainer's local output_dir (train.log, metrics.csv, plots) outlives the instance in
        <root>/outputs/: only files S3 lacks are sent (s3copy, as the notice watcher does)."""
        s = self.state
        if not s.output_dir or is_s3(s.output_dir):
            return
        path = (
            s.output_dir
            if s.output_dir.startswith(("/", "~"))
            else join_path(code_dir(s.remote_dir), s.output_dir)
        )
        folder = local_path(path, s.login_user)
        if not folder.is_dir():
            return
        try:
            stats = s3copy.copy_folder(self.s3, folder, detached.outputs_uri(self.root))
        except s3copy.CopyError as e:
            log(str(e))
            return
        log(f"outputs: {len(stats.uploaded)} file(s) copied to {detached.outputs_uri(self.root)}")

    # --- the whole boot -----------------------------------------------------------------------------
    def read_record(self) -> str | None:
        """The run's record into self.state: None, or why it cannot be read."""
        uri = detached.state_uri(self.root)
        try:
            self.state = detached.load(self.s3, self.root)
        except botocore.exceptions.ClientError as e:
            return f"reading the run's record {uri} was refused ({aws.error_code(e)}): {e}"
        except botocore.exceptions.BotoCoreError as e:
            return f"reading the run's record {uri} failed: {e}"
        except (ValueError, TypeError, KeyError) as e:
            return f"the run's record {uri} is corrupt ({type(e).__name__}: {e})"
        return None if self.state is not None else f"no run record at {uri}"

    def give_up(self, why: str) -> int:
        """Before the record is read, max_recoveries cannot bind: stop the group from here (desired
        0, the cause on its tag, where `fab watch` shows it), then this instance."""
        group = self.group or (self.state.group if self.state else None)
        log(f"{why}: giving up")
        if group is None:
            log("no --group given: cannot stop the group")
        else:
            for failed in giveup.give_up(group, self.me.region, why):
                log(failed)
        self.shut_down(None, "spotrun: boot failed before the run's record was read")
        return 1

    def run(self) -> int:
        why = self.read_record()
        if why is not None:
            return self.give_up(why)
        already = self.state.ended
        why = self.begin()
        if why is not None:
            # A boot after the end (a late replacement) runs nothing; past a guard, it is the guard.
            stopped = already or self.state.status is RunStatus.STOPPED
            outcome = Outcome.NOT_STARTED if stopped else Outcome(self.state.status.value)
            return self.end(outcome, self.state.status, why, stop_group=True, shut_down=True)
        left_min = max(1, int(self.state.seconds_left() // 60))
        self.shut_down(left_min, "spotrun: the run's deadline")
        self.state.status = RunStatus.RUNNING
        self.save()
        log(f"attempt {self.attempt.number} of {self.state.max_attempts} on {self.me.instance_id}")

        run_dir = self.start() if self.setup() else None
        if run_dir is None:
            # Setup, or starting the run on this machine, failed.
            before = self.state.attempts[-2] if len(self.state.attempts) > 1 else None
            if before is not None and before.outcome is Outcome.SETUP_FAILED:
                return self.end(
                    Outcome.SETUP_FAILED,
                    RunStatus.SETUP_FAILED,
                    "setup failed on two boots in a row",
                    stop_group=True,
                    shut_down=True,
                )
            # Perhaps this machine only (a bad disk, a package mirror hiccup): let the group try another.
            return self.end(
                Outcome.SETUP_FAILED, RunStatus.INTERRUPTED, "setup failed", stop_group=False, shut_down=True
            )

        self.attempt.outcome = Outcome.RUNNING
        self.attempt.running_at = now_iso()  # the end of a recovery's billed time (ec2.journey.ledger)
        self.save()
        code = self.wait(run_dir)
        self.attempt.exit_code = code
        self.keep_log(run_dir)
        attempt_notes.note_end(self.attempt, run_dir)
        self.keep_outputs()
        noticed = (run_dir / "notice").exists()
        deadline_hit = self.state.status is RunStatus.DEADLINE
        self.refresh_stop()
        ending = ending_for(code, noticed)
        if deadline_hit and ending.outcome is not Outcome.FINISHED:
            ending = Ending(Outcome.DEADLINE, RunStatus.DEADLINE, stop_group=True)
        elif self.budget.reached and ending.outcome is not Outcome.FINISHED:
            ending = Ending(Outcome.STOPPED, RunStatus.STOPPED, stop_group=True)
            spend.event(
                self.state,
                "stopped",
                f"stopped at the cap (max_cost_usd ${self.state.max_cost_usd:g}) "
                f"with a checkpoint; submit again with a higher max_cost_usd to go on",
                attempt=self.attempt.number,
                why="max_cost_usd",
            )
        self.attempt.outcome = ending.outcome
        if ending.outcome is Outcome.PREEMPTED:
            self.budget.after_interruption()
        log(f"run exited {code}: {ending.outcome}")
        return self.end(
            ending.outcome,
            ending.status,
            f"run {ending.outcome}",
            stop_group=ending.stop_group,
            shut_down=False,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ec2.remote.boot", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the run's S3 root (holds state.json)")
    parser.add_argument(
        "--group", help="the run's Auto Scaling group (stopped when the record is unreadable)"
    )
    parser.add_argument("--shutdown", default=os.environ.get("SPOTRUN_SHUTDOWN", DEFAULT_SHUTDOWN))
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the run")
    parser.add_argument(
        "--cost-every",
        type=float,
        default=spend.COST_EVERY_S,
        help="seconds between readings of the run's cost (max_cost_usd)",
    )
    args = parser.parse_args(argv)
    try:
        identity = Imds().identity()
    except ImdsUnreachable as e:
        log(f"no instance metadata ({e}): a detached run's boot only runs on its EC2 instance")
        return 2
    log(f"{identity.instance_id} ({identity.instance_type}, {identity.zone}, {identity.market})")
    boot = Boot(
        args.root,
        identity,
        shutdown=args.shutdown,
        poll_s=args.poll,
        group=args.group,
        cost_every_s=args.cost_every,
    )
    try:
        return boot.run()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        # Nothing can be recorded: stop paying for this machine; the group tries another, whose
        # boot counts it (its attempt was saved, or it was never counted and costs one boot).
        log(f"AWS call failed: {e}; shutting down")
        subprocess.run(shutdown_argv(args.shutdown, None, "spotrun: boot failed"), check=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
