"""The one attempt loop of `fab run`, over a fleet of N instances (one instance is a fleet of one).

An attempt is one start of the run on the fleet. The Engine has its recovery strategy
(ec2/journey/recovery.py) launch the fleet, sets the new machines up, starts the run, then
watches: every `poll_s` it looks at each node (its AWS state and one SSH poll), judges each node
(decide.decide) and the fleet (decide.fleet_verdict), and acts on the verdict:

- finished → results down, the instances let go (unless --keep), done;
- failed → logs down, the instances let go, RunFailed: a new machine would fail the same way;
- interrupted → checkpoints and logs down while a machine still answers, then the strategy
  recovers (relaunch elsewhere, replace the lost node) and the next attempt starts, until
  --max-recoveries says give up (GaveUp).

Every event goes to outputs/<name>/run.json (ec2.journey.history) as it happens. Nothing is left
running that the user does not know about: an error while the run goes on (the laptop lost sight
of AWS or SSH) leaves it going and names it; any other error lets the instances go; on Ctrl-C the
user is asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from common.attempt import Attempt, Outcome, RunStatus
from common.times import now_iso
from ec2.config import AwsConfig
from ec2.errors import ToolkitError
from ec2.journey import budget, history, recovery, stages
from ec2.journey.decide import (
    GONE_STATES,
    End,
    NodeStatus,
    decide,
    fleet_verdict,
    last_step,
    node_status,
    notice_to_resumed,
    resumed_step,
    s3_read,
)
from ec2.journey.stages import Plan
from ec2.remote import nodes, runs, trainrun
from ec2.remote.ssh import Machine
from ec2.remote.sync import download_dir


class RunFailed(ToolkitError):
    """The command itself failed: a new instance would fail the same way."""


class GaveUp(ToolkitError):
    """Interrupted more often than --max-recoveries allows."""


class Engine:
    def __init__(
        self,
        cfg: AwsConfig,
        name: str,
        plan: Plan,
        strategy: str,
        *,
        nodes: int = 1,
        rdzv_port: int = trainrun.RDZV_PORT,
        out: Callable[[str], None] = print,
        outputs: Path | None = None,
        ask: Callable[[str], str] | None = None,
    ):
        from ec2 import paths

        self.cfg, self.name, self.plan, self.nodes, self.port = cfg, name, plan, nodes, rdzv_port
        self.out, self.ask = out, ask
        self.outputs = outputs or paths.outputs_dir(name)
        self.h = history.RunHistory(
            name=name,
            run=plan.run,
            command=plan.command,
            checkpoint_dir=plan.checkpoint_dir,
            path=str(history.history_path(self.outputs)),
            nodes=nodes,
        )
        self.rank0 = 0  # the node whose log shows the trainer's steps (c10d may put rank 0 anywhere)
        self.watching = False  # the run is going on the machines and the laptop is only looking
        self.strategy = recovery.make(strategy, self)
        self.budget = budget.Budget(self)  # on_demand_after, max_cost_usd, deadline

    @property
    def machines(self) -> list[Machine]:
        """The fleet now, in node order (the strategy's)."""
        return self.strategy.machines

    # --- the whole run -----------------------------------------------------------------------------
    def run(self, picked=None) -> history.RunHistory:
        """The run; `picked` (ec2.journey.reentry.PickedUp) goes on with a running attempt."""
        if picked is not None:
            self.h = picked.history
            self.h.status = RunStatus.RUNNING
            self.strategy.pick_up(picked)
            self.budget.pick_up(self.h)
            self.h.event("picked-up", attempt=picked.attempt.number, instance_id=picked.attempt.instance_id)
        else:
            self.h.event(
                "begin",
                nodes=self.nodes,
                instance_types=self.cfg.instance_types,
                max_recoveries=self.plan.max_recoveries,
            )
        try:
            self._attempts(None if picked is None else picked.attempt)
        except KeyboardInterrupt:
            self.on_ctrl_c()
            raise
        except ToolkitError as e:
            if self.h.status == RunStatus.RUNNING:
                self.h.status = RunStatus.FAILED
            self.h.event("error", message=str(e))
            if not isinstance(e, (RunFailed, GaveUp)):  # those have let the instances go already
                self.release()
            raise
        return self.h

    def _attempts(self, picked: Attempt | None) -> None:
        p = self.plan
        while True:
            if picked is not None:  # its run is going on: watch it, nothing to launch or start
                attempt, picked = picked, None
            else:
                self.budget.before_launch()  # at max_cost_usd already: nothing more is launched
                attempt = Attempt(number=len(self.h.attempts) + 1)
                self.h.attempts.append(attempt)
                try:
                    new = self.strategy.launch(attempt)
                except ToolkitError:
                    attempt.outcome = Outcome.LAUNCH_FAILED  # no instance: nothing billed, nothing to clean
                    raise
                try:
                    self.start(attempt, new)
                except ToolkitError:
                    attempt.outcome = Outcome.FAILED  # setup or start: a new machine would fail the same way
                    raise
            self.watching = True
            verdict = self.watch(attempt)
            self.watching = False
            if verdict.end.by_itself:
                self.finish(attempt, verdict)
                return
            if self.budget.stopping:  # the trainer stopped for max_cost_usd
                self.budget.stopped(attempt, verdict)
            self.out(f"interrupted: {verdict.why}")
            attempt.outcome = verdict.outcome
            self.h.event("interrupted", attempt=attempt.number, why=verdict.why, last_step=attempt.last_step)
            self.collect(attempt, verdict)
            if attempt.number - 1 >= p.max_recoveries:
                self.h.status, self.h.finished_at = RunStatus.GAVE_UP, now_iso()
                self.strategy.end(terminate=True)
                where = p.checkpoint_dir or "the checkpoint folder"
                raise GaveUp(
                    f"interrupted {attempt.number} time(s) and --max-recoveries is {p.max_recoveries}: "
                    f"giving up. The newest checkpoint is in {where}; {self.strategy.again} again resumes "
                    "from it"
                )
            self.budget.after_interruption()  # on_demand_after: the next attempt on-demand
            self.strategy.recover(attempt, verdict)

    def finish(self, attempt: Attempt, verdict) -> None:
        """The run ended by itself: its outputs down, the instances let go; RunFailed when it failed."""
        attempt.outcome = Outcome(verdict.end)
        self.collect(attempt, verdict)
        self.strategy.end(terminate=not self.plan.keep)
        self.h.status, self.h.finished_at = RunStatus(verdict.end), now_iso()
        kept = self.kept() if self.plan.keep and self.strategy.live() else ""
        if verdict.end == End.FINISHED and kept:
            self.out(kept)
        self.h.event(verdict.end)
        if verdict.end == End.FAILED:
            one = self.nodes == 1
            logs = f"{self.outputs}/run/log" if one else f"{self.outputs}/nodes/"
            raise RunFailed(
                f"{verdict.why} on attempt {attempt.number}; a new {'instance' if one else 'cluster'} would "
                f"fail the same way, so none is launched{'; ' + kept if kept else ''}. "
                + (f"Its log is in {logs}" if one else f"The logs are in {logs}")
            )

    # --- one attempt's start -------------------------------------------------------------------------
    def start(self, attempt: Attempt, new: list[int]) -> None:
        """Code and setup to the `new` machines, then the run: on one instance as `fab train` starts
        it (a laptop checkpoint restored first on a relaunch), on several torchrun on every node."""
        p, machines = self.plan, self.machines
        if self.nodes == 1:
            m = machines[0]
            stages.bootstrap(m, p, self.out)
            self.h.event("setup", instance_id=m.record.instance_id)
            if attempt.number > 1 and (files := stages.restore(m, p, self.outputs, self.out)) is not None:
                self.h.event("checkpoint-restored", files=files)
            started = stages.start(m, p, self.cfg)
            attempt.gpus = started.gpus
            on = f" on {started.procs} GPUs (torchrun)" if started.procs > 1 else ""
            self.out(f"started run {p.run!r} on {m.name}{on}")
            attempt.running_at = now_iso()
            self.h.event(
                "started", at=attempt.running_at, instance_id=m.record.instance_id, gpus=attempt.gpus
            )
            return
        nodes.on_each([machines[k] for k in new], lambda m: stages.bootstrap(m, p, self.out))
        self.h.event("setup", nodes=new)
        started = stages.start_nodes(
            self.cfg,
            machines,
            p,
            rendezvous_id=f"{self.name}-{p.run}-{attempt.number}",  # no agent of an older start joins
            port=self.port,
        )
        attempt.gpus, procs = started.gpus, started.procs
        self.out(f"started run {p.run!r} on {len(machines)} nodes x {procs} process(es)")
        attempt.running_at = now_iso()  # until a resume line moves it (observe): the ledger's recovery
        self.h.event(
            "started", at=attempt.running_at, attempt=attempt.number, nodes=len(machines), gpus=attempt.gpus
        )

    # --- watching ------------------------------------------------------------------------------------
    def look(self, m: Machine):
        """(AWS state, poll) of one node; the poll is None when AWS has it gone or it does not answer."""
        state = stages.instance_state(self.strategy.ec2, m.record.instance_id)
        return state, None if state in GONE_STATES else stages.poll(m, self.plan.run)

    def watch(self, attempt: Attempt):
        """Until the attempt ends: the fleet's verdict, finished, failed or interrupted."""
        p, machines = self.plan, self.machines
        count = len(machines)
        noticed, stopped = [False] * count, set()
        unreachable_since: list[float | None] = [None] * count
        started = last_download = time.monotonic()
        waiting_since, shown = None, ""
        while True:
            # One node is looked at here (Ctrl-C stops its SSH at once); several at the same time.
            looks = [self.look(machines[0])] if count == 1 else nodes.on_each(machines, self.look)
            verdicts, statuses = [], []
            for k, (aws_state, polled) in enumerate(looks):
                if polled is not None:
                    unreachable_since[k] = None
                    self.observe(attempt, k, polled, noticed)
                elif unreachable_since[k] is None:
                    unreachable_since[k] = time.monotonic()
                since = unreachable_since[k]
                verdict = decide(
                    aws_state,
                    polled,
                    noticed=noticed[k],
                    unreachable_s=p.unreachable_s,
                    unreachable_for=None if since is None else time.monotonic() - since,
                )
                verdicts.append(verdict)
                status = NodeStatus.STOPPED if k in stopped else node_status(verdict, polled, noticed[k])
                statuses.append(status)
            shown = self.show(attempt, looks, statuses, started, shown)
            self.budget.check(attempt)
            verdict = fleet_verdict(verdicts, statuses, noticed)
            if verdict.end.over:
                return verdict
            if verdict.end == End.WAITING:
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > p.unreachable_s:
                    self.stop_lingering(statuses, stopped)
            polled = looks[self.rank0][1]
            if (
                polled
                and p.local_checkpoint(self.outputs) is not None
                and time.monotonic() - last_download > p.download_every_s
            ):
                self.pull(machines[self.rank0], "checkpoints")
                last_download = time.monotonic()
            time.sleep(p.poll_s)

    def observe(self, attempt: Attempt, k: int, polled, noticed: list[bool]) -> None:
        """Steps, the exit code, the resume and notices from node k's poll, into the attempt and events."""
        step = last_step(polled.log_tail)
        if step is not None and (attempt.last_step is None or step >= attempt.last_step):
            self.rank0 = k
        note_step(attempt, polled.log_tail)
        if k == self.rank0 and polled.state.state == "finished":
            attempt.exit_code = polled.state.exit_code
        if polled.state.state == "preempted" and attempt.seconds_notice_to_safe is None:
            attempt.seconds_notice_to_safe = (polled.preempted or {}).get("seconds_notice_to_safe")
            # The watcher's record says how the command ended (75: stopped on the notice, resumable).
            attempt.exit_code = (polled.preempted or {}).get("command_exit_code")
        if attempt.resumed_step is None and (at := resumed_step(polled.log_tail)) is not None:
            attempt.resumed_step = at
            before = self.h.attempts[-2] if len(self.h.attempts) > 1 else None
            if before is not None:
                attempt.seconds_notice_to_resumed = notice_to_resumed(before.notice_seen_at, time.time())
            after = attempt.seconds_notice_to_resumed
            # The end of this attempt's recovery (ec2.journey.ledger): the event's own time.
            attempt.running_at = now_iso()
            self.h.event(
                "resumed", at=attempt.running_at, attempt=attempt.number, step=at, seconds_from_notice=after
            )
        if polled.notice and not noticed[k]:
            noticed[k] = True
            if attempt.notice_seen_at is None:
                attempt.notice_seen_at = polled.notice.get("seen_at") or time.time()
            self.h.event(
                "spot-notice",
                attempt=attempt.number,
                node=k,
                **{key: polled.notice.get(key) for key in ("action", "time")},
            )

    def show(self, attempt: Attempt, looks, statuses: list[NodeStatus], started: float, shown: str) -> str:
        """A status line when something changed, not a scroll of repeats; returns the line's state.
        One instance: its AWS state and its run; several: each node's part."""
        step = attempt.last_step if attempt.last_step is not None else "-"
        if len(looks) == 1:
            aws_state, polled = looks[0]
            now = f"instance {aws_state} | run {polled.state if polled else 'unreachable'} | step {step}"
            where = f": {attempt.instance_type} {attempt.zone} {attempt.market}"
        else:
            now = " | ".join([*(f"node {k} {s}" for k, s in enumerate(statuses)), f"step {step}"])
            where = ""
        if now != shown:
            self.out(f"[attempt {attempt.number}{where}] {_clock(time.monotonic() - started)} {now}")
        return now

    def stop_lingering(self, statuses: list[NodeStatus], stopped: set[int]) -> None:
        """A node lost: the runs still going wait in their collectives for its rank. Stop them; the
        restart resumes from the newest checkpoint in S3."""
        for k, status in enumerate(statuses):
            if status == NodeStatus.RUNNING:
                self.out(f"node {k} still running {self.plan.unreachable_s:g} s after; stopping its run")
                try:
                    self.machines[k].run(runs.stop_command(self.plan.run), check=False, retry=False)
                except ToolkitError:
                    pass  # unreachable: its run ends at the collective's timeout
                stopped.add(k)

    # --- what comes back to the laptop ---------------------------------------------------------------
    def collect(self, attempt: Attempt, verdict) -> None:
        """After an attempt: one instance's outputs into outputs/ as `fab download` brings them
        (results, else its log, else checkpoints and logs while it answers); several nodes' run
        folders to outputs/nodes/attempt-N/node-K and the results from the node rank 0 ran on."""
        if self.nodes == 1:
            if verdict.reachable:
                what = {End.FINISHED: "results", End.FAILED: "logs"}.get(verdict.end, "checkpoints and logs")
                self.pull(self.machines[0], what)
            return
        for k, m in enumerate(self.machines):
            if self.look(m)[1] is None:
                continue  # AWS has taken it, or it does not answer
            where = self.outputs / "nodes" / f"attempt-{attempt.number}" / f"node-{k}"
            try:
                download_dir(m, runs.run_dir(m.record.remote_dir, self.plan.run), where)
            except ToolkitError as e:
                self.out(f"could not download node {k}'s log: {e}")
        if verdict.end == End.FINISHED and stages.pull(
            self.machines[self.rank0], self.plan, self.outputs, "results", self.out
        ):
            self.h.event("downloaded", what="results", node=self.rank0)

    def pull(self, m: Machine, what: str) -> None:
        got = stages.pull(m, self.plan, self.outputs, what, self.out)
        if got is not None:
            # The log came down after the checkpoints: its last step is at least the newest
            # checkpoint's, so steps lost are counted from there if the machine vanishes next.
            log = self.outputs / "run" / "log"
            if log.is_file() and self.h.attempts:
                note_step(self.h.attempts[-1], _tail(log))
            # "downloaded" means the checkpoints came too; "downloaded-log" only the run's log.
            self.h.event("downloaded" if got == "all" else "downloaded-log", what=what)

    # --- letting go ------------------------------------------------------------------------------------
    def kept(self) -> str:
        ids = self.strategy.live()
        them = "it" if len(ids) == 1 else "them"
        return f"{', '.join(ids)} kept (--keep): terminate {them} with `fab terminate --name {self.name}`"

    def release(self) -> None:
        """After an error: nothing left running that the user does not know about. While the run
        goes on (the laptop lost sight of AWS or SSH) it is left going and named; otherwise (launch,
        setup, start, a replacement) the instances are terminated, or named when --keep keeps them."""
        if not self.strategy.live():
            return
        if self.watching:
            self.strategy.leave_running(ctrl_c=False)
            return
        self.h.finished_at = self.h.finished_at or now_iso()
        if self.plan.keep:
            self.strategy.end(terminate=False)
            self.out(self.kept())
            return
        try:
            self.strategy.end(terminate=True)
        except ToolkitError as e:
            self.out(
                f"could not terminate {', '.join(self.strategy.live())} ({e}); "
                f"terminate them with `fab terminate --name {self.name}`"
            )

    def on_ctrl_c(self) -> None:
        self.h.status = RunStatus.INTERRUPTED
        live = self.strategy.live()
        if not live:
            self.h.event("ctrl-c")
            return
        question = f"terminate {', '.join(live)} ({self.strategy.label}) now? [t]erminate / [l]eave running: "
        answer = self.ask(question) if self.ask else ""
        if answer.strip().lower().startswith("t"):
            self.strategy.end(terminate=True, outcome=Outcome.TERMINATED_BY_USER)
            decision = Outcome.TERMINATED_BY_USER
        else:
            self.strategy.leave_running(ctrl_c=True)
            decision = Outcome.LEFT_RUNNING
        self.h.event("ctrl-c", decision=decision)


def note_step(attempt: Attempt, log_tail: str) -> None:
    """The newest step and the trainer's S3 read line from a log's tail, into the attempt."""
    step = last_step(log_tail)
    if step is not None and (attempt.last_step is None or step > attempt.last_step):
        attempt.last_step = step
    read = s3_read(log_tail)
    if read is not None:
        attempt.s3_gets, attempt.s3_gb, attempt.s3_request_usd = read


def _tail(path: Path, size: int = 16384) -> str:
    with open(path, "rb") as f:
        f.seek(max(f.seek(0, 2) - size, 0))
        return f.read().decode(errors="replace")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
