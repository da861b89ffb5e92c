"""The managed run (`fab run`): launch → setup → sync → train → watch, and carry on elsewhere when
spot takes the instance back.

Each attempt is one instance. The watch loop polls AWS (the instance's state) and the run (one SSH
call: run state, the watcher's preempted record, the log's tail) every `poll_s` seconds:

- finished(0)                          → download results, terminate, summary;
- finished(N), N not 0 and not 75      → the command failed: a relaunch will not fix it; stop,
                                         download the logs, terminate (unless keep);
- preempted, finished(75), or AWS says shutting-down/terminated/stopped, or the run is gone, or
  SSH has been unreachable for `unreachable_s` while AWS has no answer either
                                       → an interruption: pull what can be pulled, terminate what
                                         is left, launch a replacement elsewhere (the interrupted
                                         type and zone excluded), restore the newest checkpoint
                                         when checkpoints are not in S3, start again (resume=auto).

Every event is written to outputs/<name>/run.json (ec2.history) as it happens.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ec2 import aws, history, instances, pricing, runs
from ec2.config import AwsConfig
from ec2.errors import ToolkitError
from ec2.remote import Machine, join_path, quote_path
from ec2.sync import download_argv, download_outputs, rsync_with_retries, sync_code, upload_dir

SETUP_SCRIPT = "scripts/setup_instance.sh"
RESUMABLE = 75  # ml.errors.STOPPED_RESUMABLE (not imported: ml pulls in torch)
GONE_STATES = ("shutting-down", "terminated", "stopping", "stopped")
_MARK = "@@spotrun@@"
_RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")
_STEP = re.compile(r"\b(?:step|batch)\s*[:=#]?\s*(\d+)", re.IGNORECASE)


class RunFailed(ToolkitError):
    """The command itself failed: a new instance would fail the same way."""


class GaveUp(ToolkitError):
    """Interrupted more often than --max-recoveries allows."""


@dataclass
class Plan:
    """What to run, resolved by the task from the configs."""

    command: str  # the remote command line (python -m ml.train ...)
    run: str = "train"
    env: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None  # the trainer's (relative to code/, or absolute, or s3://)
    checkpoint_dir: str | None = None
    signal: str = "USR1"
    poll_s: float = 30.0  # how often the laptop looks at the instance and the run
    imds_poll_s: float = 5.0  # how often the watcher on the instance asks for notices
    download_every_s: float = 600.0  # pull local checkpoints to the laptop this often
    unreachable_s: float = 300.0
    max_recoveries: int = 3
    keep: bool = False
    setup_python: str | None = None  # a ready python instead of the venv (a prepared machine)
    require_gpu: bool = True
    local_root: str = "."


@dataclass(frozen=True)
class Poll:
    state: runs.RunState
    preempted: dict | None
    notice: dict | None
    log_tail: str


def poll_command(remote_dir: str, run: str) -> str:
    """One SSH round trip: the run state, the watcher's notice and preempted records, the log's tail."""
    rdir = quote_path(runs.run_dir(remote_dir, run))
    return (f"{runs.state_command(remote_dir, run)}; echo {_MARK}; cat {rdir}/preempted 2>/dev/null; "
            f"echo {_MARK}; cat {rdir}/notice 2>/dev/null; "
            f"echo {_MARK}; tail -c 16384 {rdir}/log 2>/dev/null; true")


def parse_poll(text: str) -> Poll:
    import json

    state_text, _, rest = text.partition(_MARK)
    preempted_text, _, rest = rest.partition(_MARK)
    notice_text, _, log_tail = rest.partition(_MARK)

    def record(part: str) -> dict | None:
        try:
            return json.loads(part) if part.strip() else None
        except json.JSONDecodeError:
            return None  # caught mid-write by an older watcher: the next poll sees it whole

    return Poll(runs.parse_state(state_text), record(preempted_text), record(notice_text), log_tail)


def last_step(log: str) -> int | None:
    steps = [int(m.group(1)) for m in _STEP.finditer(log)]
    return steps[-1] if steps else None


def resumed_step(log: str) -> int | None:
    found = _RESUMED.findall(log)
    return int(found[-1][1]) if found else None


def watcher_args(plan: Plan, backup_uri: str | None) -> list[str]:
    args = ["--signal", plan.signal, "--poll", f"{plan.imds_poll_s:g}"]
    if plan.checkpoint_dir:
        args += ["--checkpoint-dir", plan.checkpoint_dir]
        if backup_uri and not plan.checkpoint_dir.startswith("s3://"):
            args += ["--upload-to", backup_uri]
    return args


def setup_command(remote_dir: str, python: str | None, require_gpu: bool) -> str:
    env = f"SPOTRUN_SETUP_PYTHON={quote_path(python)} " if python else ""
    env += "" if require_gpu else "SPOTRUN_REQUIRE_GPU=0 "
    script = quote_path(join_path(runs.code_dir(remote_dir), SETUP_SCRIPT))
    return f"{env}bash {script} {quote_path(remote_dir)}"


class Journey:
    def __init__(self, cfg: AwsConfig, name: str, plan: Plan, *, out: Callable[[str], None] = print,
                 outputs: Path | None = None, ask: Callable[[str], str] | None = None):
        from ec2 import paths

        self.cfg, self.name, self.plan, self.out = cfg, name, plan, out
        self.outputs = outputs or paths.outputs_dir(name)
        self.ask = ask
        self.ec2 = None
        self.h = history.RunHistory(name=name, run=plan.run, command=plan.command,
                                    path=str(history.history_path(self.outputs)))
        self.exclude: set[tuple[str, str]] = set()
        self.machine: Machine | None = None

    # --- stages -------------------------------------------------------------------------------------
    def provision(self, attempt: history.Attempt) -> Machine:
        from ec2.launch import launch

        record = launch(self.cfg, self.name, exclude=frozenset(self.exclude), out=self.out)
        self.ec2 = aws.client("ec2", record.region or self.cfg.region, self.cfg.profile)
        attempt.instance_id, attempt.instance_type = record.instance_id, record.instance_type
        attempt.zone, attempt.market = record.zone, record.market
        attempt.launched_at = record.launched_at or history.now_iso()
        attempt.outcome = "running"
        self.h.event("launched", attempt=attempt.number, instance_id=record.instance_id,
                     instance_type=record.instance_type, zone=record.zone, market=record.market)
        return Machine(record)

    def bootstrap(self, m: Machine) -> None:
        stats = sync_code(m, self.plan.local_root)
        self.out(f"synced code to {m.name} ({stats.files_transferred} file(s))")
        result = m.run(setup_command(m.record.remote_dir, self.plan.setup_python, self.plan.require_gpu),
                       check=False)
        if result.code != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ToolkitError(f"setup failed on {m.name} (exit {result.code}): {' | '.join(tail)}; "
                               "fix it, then `fab run` again (it resumes from the newest checkpoint)")
        self.out(f"setup done on {m.name}")
        self.h.event("setup", instance_id=m.record.instance_id)

    def local_checkpoint(self) -> Path | None:
        """Where `download` puts the checkpoint folder on the laptop (None when it lives in S3)."""
        p = self.plan
        if not p.checkpoint_dir or p.checkpoint_dir.startswith("s3://"):
            return None
        if p.output_dir and p.checkpoint_dir.startswith(p.output_dir.rstrip("/") + "/"):
            return self.outputs / p.checkpoint_dir[len(p.output_dir.rstrip("/")) + 1:]
        return self.outputs / "checkpoint"

    def restore(self, m: Machine) -> None:
        local = self.local_checkpoint()
        if local is None or not local.is_dir() or not any(local.iterdir()):
            return
        stats = upload_dir(m, local, self.plan.checkpoint_dir)
        self.out(f"restored the newest local checkpoint to {m.name}: {stats.files_transferred} file(s)")
        self.h.event("checkpoint-restored", files=stats.files_transferred)

    def start(self, m: Machine) -> None:
        p = self.plan
        runs.start_run(m, p.run, p.command, force=True, env=p.env,
                       watcher_args=watcher_args(p, self.cfg.checkpoint_backup_uri), output_dir=p.output_dir)
        self.out(f"started run {p.run!r} on {m.name}")
        self.h.event("started", instance_id=m.record.instance_id)

    def _checkpoint_outside_outputs(self) -> bool:
        p = self.plan
        return bool(p.output_dir) and not p.checkpoint_dir.startswith(p.output_dir.rstrip("/") + "/")

    def pull(self, m: Machine, what: str) -> None:
        """Bring outputs (and a local checkpoint folder) back while the machine still answers."""
        try:
            # The run dir records the trainer's output_dir, resolved against code/ on the machine.
            download_outputs(m, self.plan.run, self.outputs)
            local = self.local_checkpoint()
            if local is not None and self._checkpoint_outside_outputs():
                remote = self.plan.checkpoint_dir
                if not remote.startswith(("/", "~")):
                    remote = join_path(runs.code_dir(m.record.remote_dir), remote)
                local.mkdir(parents=True, exist_ok=True)
                rsync_with_retries(m, download_argv(m, remote, local), "download")
        except ToolkitError as e:
            self.out(f"could not download {what} from {m.name}: {e}")
            # A command that failed early made no outputs; its log is what matters then.
            try:
                (self.outputs / "run").mkdir(parents=True, exist_ok=True)
                remote_run = runs.run_dir(m.record.remote_dir, self.plan.run)
                argv = download_argv(m, remote_run, self.outputs / "run")
                rsync_with_retries(m, argv, "download")
            except ToolkitError:
                return
        self.h.event("downloaded", what=what)

    # --- watching -----------------------------------------------------------------------------------
    def instance_state(self, m: Machine) -> str:
        info = instances.describe_instance(self.ec2, m.record.instance_id)
        return "gone" if info is None else info.state

    def poll(self, m: Machine) -> Poll | None:
        quick = Machine(m.record, attempts=1, control=m.control)
        try:
            result = quick.run(poll_command(m.record.remote_dir, self.plan.run), timeout=30, retry=False)
        except ToolkitError:
            return None
        return parse_poll(result.stdout)

    def watch(self, m: Machine, attempt: history.Attempt) -> str:
        """Until the attempt ends: 'finished', 'failed' or 'interrupted'."""
        p = self.plan
        started = time.monotonic()
        last_download = time.monotonic()
        unreachable_since: float | None = None
        shown = ""
        noticed = False
        while True:
            aws_state = self.instance_state(m)
            polled = None if aws_state in GONE_STATES or aws_state == "gone" else self.poll(m)
            if polled is not None:
                unreachable_since = None
                step = last_step(polled.log_tail)
                attempt.last_step = step if step is not None else attempt.last_step
                if attempt.resumed_step is None:
                    attempt.resumed_step = resumed_step(polled.log_tail)
                if polled.notice and not noticed:
                    noticed = True
                    self.h.event("spot-notice", attempt=attempt.number, **{
                        k: polled.notice.get(k) for k in ("action", "time")})
            elif unreachable_since is None:
                unreachable_since = time.monotonic()
            run_text = str(polled.state) if polled else "unreachable"
            step_text = attempt.last_step if attempt.last_step is not None else "-"
            now_shown = f"instance {aws_state} | run {run_text} | step {step_text}"
            if now_shown != shown:  # a status line when something changed, not a scroll of repeats
                shown = now_shown
                where = f"{attempt.instance_type} {attempt.zone} {attempt.market}"
                clock = _clock(time.monotonic() - started)
                self.out(f"[attempt {attempt.number}: {where}] {clock} {now_shown}")
            if polled and polled.state.state == "finished":
                attempt.exit_code = polled.state.exit_code
                if polled.state.exit_code == 0:
                    return "finished"
                if polled.state.exit_code != RESUMABLE:
                    return "failed"
                return self.interrupted(m, attempt, "the command stopped resumably (exit 75)")
            if polled and polled.state.state == "preempted":
                attempt.seconds_notice_to_safe = (polled.preempted or {}).get("seconds_notice_to_safe")
                return self.interrupted(m, attempt, "spot interruption notice; checkpoint secured")
            if aws_state in GONE_STATES or aws_state == "gone":
                why = f"instance {aws_state}" + (" after a spot interruption notice" if noticed else "")
                return self.interrupted(m, attempt, why, reachable=False)
            if polled and polled.state.state == "none":
                return self.interrupted(m, attempt, "the run is gone from the instance (rebooted?)")
            if unreachable_since is not None and time.monotonic() - unreachable_since > p.unreachable_s:
                return self.interrupted(m, attempt, f"unreachable for {p.unreachable_s:g} s", reachable=False)
            if (polled and self.local_checkpoint() is not None
                    and time.monotonic() - last_download > p.download_every_s):
                self.pull(m, "checkpoints")
                last_download = time.monotonic()
            time.sleep(p.poll_s)

    def interrupted(self, m: Machine, attempt: history.Attempt, why: str, reachable: bool = True) -> str:
        self.out(f"interrupted: {why}")
        attempt.outcome = "preempted" if "notice" in why else "lost"
        self.h.event("interrupted", attempt=attempt.number, why=why, last_step=attempt.last_step)
        if reachable:
            self.pull(m, "checkpoints and logs")
        return "interrupted"

    # --- ending an attempt --------------------------------------------------------------------------
    def close_attempt(self, m: Machine, attempt: history.Attempt, terminate: bool) -> None:
        if terminate and self.instance_state(m) != "gone":
            instances.terminate_instances(self.ec2, [m.record.instance_id], wait=True)
            instances.forget_local(self.name)
            self.out(f"terminated {m.record.instance_id}")
            self.h.event("terminated", instance_id=m.record.instance_id)
        attempt.ended_at = history.now_iso()
        attempt.cost_usd = self.cost(attempt)
        self.h.save()

    def cost(self, a: history.Attempt) -> float | None:
        from datetime import datetime

        if not (a.launched_at and a.ended_at and a.instance_type):
            return None
        start, end = datetime.fromisoformat(a.launched_at), datetime.fromisoformat(a.ended_at)
        if a.market == "spot":
            points = pricing.spot_history(self.ec2, [a.instance_type], start, end, zones=[a.zone]).get(
                (a.instance_type, a.zone), [])
            if points:
                return pricing.cost_over(points, start, end)
        price = pricing.on_demand_price(a.instance_type)
        return None if price is None else price * (end - start).total_seconds() / 3600

    # --- the whole journey --------------------------------------------------------------------------
    def run(self) -> history.RunHistory:
        self.h.event("begin", instance_types=self.cfg.instance_types, max_recoveries=self.plan.max_recoveries)
        try:
            self._attempts()
        except KeyboardInterrupt:
            self.on_ctrl_c()
            raise
        except ToolkitError as e:
            if self.h.status == "running":
                self.h.status = "failed"
            self.h.event("error", message=str(e))
            raise
        return self.h

    def _attempts(self) -> None:
        p = self.plan
        while True:
            attempt = history.Attempt(number=len(self.h.attempts) + 1)
            self.h.attempts.append(attempt)
            self.out(f"attempt {attempt.number}: launching {self.name}"
                     + (f" (excluding {', '.join(f'{t} in {z}' for t, z in sorted(self.exclude))})"
                        if self.exclude else ""))
            m = self.machine = self.provision(attempt)
            self.bootstrap(m)
            if attempt.number > 1:
                self.restore(m)
            self.start(m)
            outcome = self.watch(m, attempt)
            if outcome == "finished":
                self.pull(m, "results")
                attempt.outcome = "finished"
                self.close_attempt(m, attempt, terminate=not p.keep)
                self.h.status, self.h.finished_at = "finished", history.now_iso()
                self.h.event("finished")
                return
            if outcome == "failed":
                self.pull(m, "logs")
                attempt.outcome = "failed"
                self.close_attempt(m, attempt, terminate=not p.keep)
                self.h.status, self.h.finished_at = "failed", history.now_iso()
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
            self.out(f"left {iid} running (the run goes on in tmux). Follow it with "
                     f"`fab logs --name {m.name}`; terminate it with `fab terminate --name {m.name}`")
        self.h.event("ctrl-c", decision=attempt.outcome)


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
