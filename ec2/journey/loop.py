"""The managed run's loops: attempts (one instance each) until the run finishes, fails or gives
up, and within an attempt the watch loop that polls AWS and the run every `poll_s` seconds and acts
on `decide`'s verdict. Every event is written to outputs/<name>/run.json (ec2.journey.history) as it happens.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from ec2.config import AwsConfig
from ec2.errors import CapacityError, ToolkitError
from ec2.journey import history, report, stages
from ec2.journey.decide import (
    GONE_STATES,
    Poll,
    Verdict,
    decide,
    last_step,
    resumed_step,
    s3_read,
)
from ec2.journey.stages import Plan
from ec2.remote.ssh import Machine


class RunFailed(ToolkitError):
    """The command itself failed: a new instance would fail the same way."""


class GaveUp(ToolkitError):
    """Interrupted more often than --max-recoveries allows."""


class Journey:
    def __init__(
        self,
        cfg: AwsConfig,
        name: str,
        plan: Plan,
        *,
        out: Callable[[str], None] = print,
        outputs: Path | None = None,
        ask: Callable[[str], str] | None = None,
    ):
        from ec2 import paths

        self.cfg, self.name, self.plan, self.out = cfg, name, plan, out
        self.outputs = outputs or paths.outputs_dir(name)
        self.ask = ask
        self.ec2 = None
        self.h = history.RunHistory(
            name=name, run=plan.run, command=plan.command, path=str(history.history_path(self.outputs))
        )
        self.exclude: set[tuple[str, str]] = set()
        self.machine: Machine | None = None

    # --- one attempt's stages, recorded ------------------------------------------------------------
    def provision(self, attempt: history.Attempt) -> Machine:
        try:
            record, self.ec2 = stages.provision(
                self.cfg, self.name, frozenset(self.exclude), self.out, self.plan.s3
            )
        except CapacityError as e:
            if e.code != "NoChoices" or not self.exclude:
                raise
            # Every configured type and zone has been interrupted once (with one type in one zone:
            # the first interruption). Spot capacity comes back, and recoveries remain: try them all
            # again, cheapest first, rather than fail.
            self.out("every configured type and zone has been interrupted once; trying them all again")
            self.exclude.clear()
            record, self.ec2 = stages.provision(self.cfg, self.name, frozenset(), self.out, self.plan.s3)
        attempt.instance_id, attempt.instance_type = record.instance_id, record.instance_type
        attempt.zone, attempt.market = record.zone, record.market
        attempt.launched_at = record.launched_at or history.now_iso()
        attempt.outcome = "running"
        self.h.event(
            "launched",
            attempt=attempt.number,
            instance_id=record.instance_id,
            instance_type=record.instance_type,
            zone=record.zone,
            market=record.market,
        )
        return Machine(record)

    def prepare(self, m: Machine, attempt: history.Attempt) -> None:
        stages.bootstrap(m, self.plan, self.out)
        self.h.event("setup", instance_id=m.record.instance_id)
        if attempt.number > 1 and (files := stages.restore(m, self.plan, self.outputs, self.out)) is not None:
            self.h.event("checkpoint-restored", files=files)
        attempt.gpus = stages.start(m, self.plan, self.cfg.checkpoint_backup_uri, self.out)
        self.h.event("started", instance_id=m.record.instance_id, gpus=attempt.gpus)

    def pull(self, m: Machine, what: str) -> None:
        got = stages.pull(m, self.plan, self.outputs, what, self.out)
        if got is not None:
            # The log came down after the checkpoints: its last step is at least the newest
            # checkpoint's, so steps lost are counted from there if the machine vanishes next.
            log = self.outputs / "run" / "log"
            if log.is_file() and self.h.attempts:
                self.note_step(self.h.attempts[-1], _tail(log))
            # "downloaded" means the checkpoints came too; "downloaded-log" only the run's log.
            self.h.event("downloaded" if got == "all" else "downloaded-log", what=what)

    @staticmethod
    def note_step(attempt: history.Attempt, log_tail: str) -> None:
        step = last_step(log_tail)
        if step is not None and (attempt.last_step is None or step > attempt.last_step):
            attempt.last_step = step
        read = s3_read(log_tail)
        if read is not None:
            attempt.s3_gets, attempt.s3_gb, attempt.s3_request_usd = read

    def instance_state(self, m: Machine) -> str:
        return stages.instance_state(self.ec2, m.record.instance_id)

    def poll(self, m: Machine) -> Poll | None:
        return stages.poll(m, self.plan.run)

    # --- watching -----------------------------------------------------------------------------------
    def watch(self, m: Machine, attempt: history.Attempt) -> str:
        """Until the attempt ends: 'finished', 'failed' or 'interrupted'."""
        p = self.plan
        started = last_download = time.monotonic()
        unreachable_since: float | None = None
        shown = ""
        noticed = False
        while True:
            aws_state = self.instance_state(m)
            polled = None if aws_state in GONE_STATES else self.poll(m)
            if polled is not None:
                unreachable_since = None
                self.note_step(attempt, polled.log_tail)
                if attempt.resumed_step is None and (at := resumed_step(polled.log_tail)) is not None:
                    attempt.resumed_step = at
                    self.h.event("resumed", attempt=attempt.number, step=at)
                if polled.notice and not noticed:
                    noticed = True
                    self.h.event(
                        "spot-notice",
                        attempt=attempt.number,
                        **{k: polled.notice.get(k) for k in ("action", "time")},
                    )
            elif unreachable_since is None:
                unreachable_since = time.monotonic()
            shown = self.show(attempt, aws_state, polled, started, shown)
            verdict = decide(
                aws_state,
                polled,
                noticed=noticed,
                unreachable_s=p.unreachable_s,
                unreachable_for=None if unreachable_since is None else time.monotonic() - unreachable_since,
            )
            if polled is not None and polled.state.state == "finished":
                attempt.exit_code = polled.state.exit_code
            if verdict.end in ("finished", "failed"):
                return verdict.end
            if verdict.end == "interrupted":
                if polled is not None and polled.state.state == "preempted":
                    attempt.seconds_notice_to_safe = (polled.preempted or {}).get("seconds_notice_to_safe")
                self.interrupted(m, attempt, verdict)
                return "interrupted"
            if (
                polled
                and p.local_checkpoint(self.outputs) is not None
                and time.monotonic() - last_download > p.download_every_s
            ):
                self.pull(m, "checkpoints")
                last_download = time.monotonic()
            time.sleep(p.poll_s)

    def show(
        self, attempt: history.Attempt, aws_state: str, polled: Poll | None, started: float, shown: str
    ) -> str:
        """A status line when something changed, not a scroll of repeats; returns the line's state."""
        run_text = str(polled.state) if polled else "unreachable"
        step_text = attempt.last_step if attempt.last_step is not None else "-"
        now = f"instance {aws_state} | run {run_text} | step {step_text}"
        if now != shown:
            where = f"{attempt.instance_type} {attempt.zone} {attempt.market}"
            self.out(f"[attempt {attempt.number}: {where}] {_clock(time.monotonic() - started)} {now}")
        return now

    def interrupted(self, m: Machine, attempt: history.Attempt, verdict: Verdict) -> None:
        self.out(f"interrupted: {verdict.why}")
        attempt.outcome = verdict.outcome
        self.h.event("interrupted", attempt=attempt.number, why=verdict.why, last_step=attempt.last_step)
        if verdict.reachable:
            self.pull(m, "checkpoints and logs")

    # --- ending an attempt --------------------------------------------------------------------------
    def close_attempt(self, m: Machine, attempt: history.Attempt, terminate: bool) -> None:
        if terminate and self.instance_state(m) != "gone":
            stages.terminate(self.ec2, self.name, m.record.instance_id, self.out)
            self.h.event("terminated", instance_id=m.record.instance_id)
        attempt.ended_at = history.now_iso()
        attempt.cost_usd = report.fetch_cost(self.ec2, attempt)
        self.h.save()

    # --- the whole journey --------------------------------------------------------------------------
    def run(self, picked=None) -> history.RunHistory:
        """The journey; `picked` (ec2.journey.reentry.PickedUp) goes on with a running attempt."""
        if picked is not None:
            self.h, self.ec2, self.machine = picked.history, picked.ec2, picked.machine
            self.h.status = "running"
            self.exclude = {(a.instance_type, a.zone) for a in self.h.attempts[:-1] if a.outcome.interrupted}
            self.h.event("picked-up", attempt=picked.attempt.number, instance_id=picked.attempt.instance_id)
        else:
            self.h.event(
                "begin", instance_types=self.cfg.instance_types, max_recoveries=self.plan.max_recoveries
            )
        try:
            self._attempts(picked)
        except KeyboardInterrupt:
            self.on_ctrl_c()
            raise
        except ToolkitError as e:
            if self.h.status == "running":
                self.h.status = "failed"
            self.h.event("error", message=str(e))
            self.say_what_is_left()
            raise
        return self.h

    def say_what_is_left(self) -> None:
        """After an error: an instance the journey did not close is still billing, so name it and
        how to follow, pick up or end it (an error while watching, e.g. AWS or SSH out of reach
        from the laptop, leaves the run going on the instance rather than kill it blind)."""
        m, attempt = self.machine, (self.h.attempts[-1] if self.h.attempts else None)
        if m is None or attempt is None or attempt.ended_at:
            return
        self.h.event("left-running", instance_id=m.record.instance_id)
        self.out(
            f"{m.record.instance_id} ({m.name}) is still running (its run goes on in tmux): "
            f"`fab run --name {m.name}` again picks it up, `fab logs --name {m.name}` follows it, "
            f"`fab terminate --name {m.name}` ends it"
        )

    def _attempts(self, picked=None) -> None:
        p = self.plan
        while True:
            if picked is not None:
                attempt, m, picked = picked.attempt, picked.machine, None
            else:
                attempt = history.Attempt(number=len(self.h.attempts) + 1)
                m = self.start_attempt(attempt)
            outcome = self.watch(m, attempt)
            if outcome in ("finished", "failed"):
                self.pull(m, "results" if outcome == "finished" else "logs")
                attempt.outcome = outcome
                self.close_attempt(m, attempt, terminate=not p.keep)
                self.h.status, self.h.finished_at = outcome, history.now_iso()
                if outcome == "finished":
                    self.h.event("finished")
                    return
                kept = f"; {m.record.instance_id} kept (--keep)" if p.keep else ""
                raise RunFailed(
                    f"the command failed with exit {attempt.exit_code} on attempt {attempt.number}; "
                    f"a new instance would fail the same way, so none is launched{kept}. "
                    f"Its log is in {self.outputs}/run/log"
                )
            # Interrupted: this instance is (being) taken back. Make sure it stops billing.
            self.close_attempt(m, attempt, terminate=True)
            self.exclude.add((attempt.instance_type, attempt.zone))
            if attempt.number - 1 >= p.max_recoveries:
                self.h.status, self.h.finished_at = "gave-up", history.now_iso()
                where = self.plan.checkpoint_dir or "the checkpoint folder"
                raise GaveUp(
                    f"interrupted {attempt.number} time(s) and --max-recoveries is {p.max_recoveries}: "
                    f"giving up. The newest checkpoint is in {where}; `fab run` again resumes from it"
                )
            self.h.event("relaunching", after_attempt=attempt.number)

    def start_attempt(self, attempt: history.Attempt) -> Machine:
        self.h.attempts.append(attempt)
        self.out(
            f"attempt {attempt.number}: launching {self.name}"
            + (
                f" (excluding {', '.join(f'{t} in {z}' for t, z in sorted(self.exclude))})"
                if self.exclude
                else ""
            )
        )
        try:
            m = self.machine = self.provision(attempt)
        except ToolkitError:
            attempt.outcome = "launch-failed"  # no instance: nothing billed, nothing to clean
            raise
        try:
            self.prepare(m, attempt)
        except ToolkitError:
            # Setup failed, or the run cannot start there (--gpus beyond the type's GPUs): the
            # next instance would fail the same way. Nothing is left billing unless --keep.
            attempt.outcome = "failed"
            self.close_attempt(m, attempt, terminate=not self.plan.keep)
            self.h.status, self.h.finished_at = "failed", history.now_iso()
            raise
        return m

    def on_ctrl_c(self) -> None:
        m, attempt = self.machine, (self.h.attempts[-1] if self.h.attempts else None)
        self.h.status = "interrupted"
        if m is None or attempt is None or attempt.ended_at:
            self.h.event("ctrl-c")
            return
        iid = m.record.instance_id
        question = f"terminate {iid} ({m.name}) now? [t]erminate / [l]eave running: "
        answer = self.ask(question) if self.ask else ""
        if answer.strip().lower().startswith("t"):
            self.close_attempt(m, attempt, terminate=True)
            attempt.outcome = "terminated-by-user"
        else:
            attempt.outcome = "left-running"
            self.out(
                f"left {iid} running (the run goes on in tmux). Follow it with "
                f"`fab logs --name {m.name}`; terminate it with `fab terminate --name {m.name}`"
            )
        self.h.event("ctrl-c", decision=attempt.outcome)


def _tail(path: Path, size: int = 16384) -> str:
    with open(path, "rb") as f:
        f.seek(max(f.seek(0, 2) - size, 0))
        return f.read().decode(errors="replace")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def stdin_asker() -> Callable[[str], str] | None:
    """A prompt when a person is at the terminal; None (leave the instance) otherwise."""
    if not sys.stdin.isatty():
        return None

    def ask(question: str) -> str:
        try:
            return input(question)
        except (EOFError, KeyboardInterrupt):
            return ""

    return ask
