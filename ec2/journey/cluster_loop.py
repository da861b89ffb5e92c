"""`fab run --nodes N`: the managed run on a cluster (ec2/cloud/cluster.py), carrying on when spot
takes one node back.

An attempt is one start of torchrun on every node (c10d rendezvous at node 0). Each poll looks at
every node (its AWS state and its run, as the one-instance loop does) and judges the run from
every node's status (decide.cluster_verdict). When a node is lost (a notice on it, AWS took it
back, or it stopped answering), the loop waits until every node's run has ended (the notice stops
every rank at the same step; rank 0 saves to S3; every node exits 75), terminates the lost node,
launches ONE replacement in the same zone and placement group, sets it up, and restarts torchrun
on all nodes, which resume from the S3 checkpoint. No capacity for the replacement in that zone
(a cluster placement group cannot span zones): the survivors are terminated too and the whole
cluster is launched again elsewhere, that type and zone excluded.

A run still going after a node was lost holds the rendezvous (its collectives wait for the lost
rank): after `unreachable_s` its tmux session is stopped, and the restart resumes from the newest
S3 checkpoint. The instances themselves (launch, replace, relaunch elsewhere, terminate, cost per
member) are ec2/journey/fleet.py.

Nothing is left running that the user does not know about: on finish and on --max-recoveries
every member is terminated (unless --keep, which names what it keeps); an error while setting up,
starting or replacing terminates every member; an error while the nodes train (the laptop lost
sight of them) leaves them training, named, with the commands to follow and end them; on Ctrl-C
the user is asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from common.s3uri import is_s3
from ec2.config import AwsConfig
from ec2.errors import ConfigError, ToolkitError
from ec2.journey import history, stages
from ec2.journey.decide import (
    GONE_STATES,
    ClusterVerdict,
    cluster_verdict,
    decide,
    last_step,
    node_status,
    notice_to_resumed,
    resumed_step,
)
from ec2.journey.fleet import Fleet
from ec2.journey.loop import GaveUp, Journey, RunFailed, _clock
from ec2.journey.stages import Plan
from ec2.remote import gpu, nodes, runs, trainrun
from ec2.remote.ssh import Machine
from ec2.remote.sync import download_dir

NEED_S3 = (
    "a multi-node run keeps its checkpoints in S3 (rank 0 writes them; the restarted cluster, "
    "replacement included, resumes from them): pass --args 'checkpoint_dir=s3://BUCKET/PREFIX' "
    "or set it in the train config"
)


def require_s3(plan: Plan) -> None:
    if not plan.checkpoint_dir or not is_s3(plan.checkpoint_dir):
        raise ConfigError(NEED_S3)
    if plan.train_config is None:
        raise ConfigError("a multi-node run starts the trainer under torchrun; it needs --train-config")


class ClusterJourney:
    def __init__(
        self,
        cfg: AwsConfig,
        name: str,
        plan: Plan,
        nodes: int,
        *,
        rdzv_port: int = trainrun.RDZV_PORT,
        out: Callable[[str], None] = print,
        outputs: Path | None = None,
        ask: Callable[[str], str] | None = None,
    ):
        from ec2 import paths

        require_s3(plan)
        self.cfg, self.name, self.plan, self.nodes, self.port = cfg, name, plan, nodes, rdzv_port
        self.out, self.ask = out, ask
        self.outputs = outputs or paths.outputs_dir(name)
        self.h = history.RunHistory(
            name=name,
            run=plan.run,
            command=plan.command,
            path=str(history.history_path(self.outputs)),
            nodes=nodes,
        )
        self.fleet = Fleet(cfg, name, nodes, self.h, s3=plan.s3, out=out)
        self.rank0 = 0  # the node whose log shows the trainer's steps (c10d may put rank 0 anywhere)
        self.watching = False  # the nodes are training and the laptop is only looking

    # --- one attempt --------------------------------------------------------------------------------
    def prepare(self, setup: list[int]) -> None:
        """Code and setup to the nodes in `setup` (new machines), all at once."""
        nodes.on_each(
            [self.fleet.machines[k] for k in setup], lambda m: stages.bootstrap(m, self.plan, self.out)
        )
        self.h.event("setup", nodes=setup)

    def start(self, attempt: history.Attempt) -> None:
        p = self.plan
        attempt.nodes = self.nodes
        attempt.instance_ids = [m.record.instance_id for m in self.fleet.machines]
        r = self.fleet.machines[0].record
        attempt.instance_type, attempt.zone, attempt.market = r.instance_type, r.zone, r.market
        attempt.launched_at, attempt.outcome = history.now_iso(), "running"
        procs = nodes.start_training(
            self.fleet.machines,
            p.run,
            p.train_config,
            p.overrides,
            gpus=p.gpus,
            rendezvous_id=f"{self.name}-{p.run}-{attempt.number}",  # no agent of an older start joins
            port=self.port,
            env=stages.run_env(self.fleet.machines[0], p),
            watcher_args=lambda procs: trainrun.watcher_args(
                p.signal, p.checkpoint_dir, None, p.imds_poll_s, ranks=procs
            ),
            output_dir=p.output_dir,
            force=True,
        )
        attempt.gpus = procs if gpu.count_gpus(self.fleet.machines[0]) else 0
        self.out(f"started run {p.run!r} on {self.nodes} nodes x {procs} process(es)")
        self.h.event("started", attempt=attempt.number, nodes=self.nodes, gpus=attempt.gpus)

    def look(self, m: Machine):
        """(AWS state, poll) of one node; the poll is None when AWS has it gone or it does not answer."""
        state = stages.instance_state(self.fleet.ec2, m.record.instance_id)
        return state, None if state in GONE_STATES else stages.poll(m, self.plan.run)

    def watch(self, attempt: history.Attempt) -> ClusterVerdict:
        """Until the attempt ends: a verdict of finished, failed or interrupted (every run ended)."""
        p, count = self.plan, len(self.fleet.machines)
        noticed, stopped = [False] * count, set()
        unreachable_since: list[float | None] = [None] * count
        started, waiting_since, shown = time.monotonic(), None, ""
        while True:
            looks = nodes.on_each(self.fleet.machines, self.look)
            statuses = []
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
                statuses.append("stopped" if k in stopped else node_status(verdict, polled, noticed[k]))
            step = attempt.last_step if attempt.last_step is not None else "-"
            now = " | ".join([*(f"node {k} {s}" for k, s in enumerate(statuses)), f"step {step}"])
            if now != shown:  # a line when something changed, not a scroll of repeats
                self.out(f"[attempt {attempt.number}] {_clock(time.monotonic() - started)} {now}")
                shown = now
            verdict = cluster_verdict(statuses)
            if verdict.end in ("finished", "failed", "interrupted"):
                return verdict
            if verdict.end == "waiting":
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > p.unreachable_s:
                    # Its collectives wait for a rank that is gone: stop it; the restart resumes
                    # from the newest checkpoint in S3.
                    for k, status in enumerate(statuses):
                        if status == "running":
                            self.out(f"node {k} still running {p.unreachable_s:g} s after; stopping its run")
                            try:
                                self.fleet.machines[k].run(runs.stop_command(p.run), check=False, retry=False)
                            except ToolkitError:
                                pass  # unreachable: its run ends at the collective's timeout
                            stopped.add(k)
            time.sleep(p.poll_s)

    def observe(self, attempt: history.Attempt, k: int, polled, noticed: list[bool]) -> None:
        """Steps, the resume and notices from one node's poll, into the attempt and the events."""
        step = last_step(polled.log_tail)
        if step is not None and (attempt.last_step is None or step >= attempt.last_step):
            self.rank0 = k
        Journey.note_step(attempt, polled.log_tail)
        if attempt.resumed_step is None and (at := resumed_step(polled.log_tail)) is not None:
            attempt.resumed_step = at
            before = self.h.attempts[-2] if len(self.h.attempts) > 1 else None
            if before is not None:
                attempt.seconds_notice_to_resumed = notice_to_resumed(before.notice_seen_at, time.time())
            self.h.event(
                "resumed",
                attempt=attempt.number,
                step=at,
                seconds_from_notice=attempt.seconds_notice_to_resumed,
            )
        if polled.notice and not noticed[k]:
            noticed[k] = True
            if attempt.notice_seen_at is None:
                attempt.notice_seen_at = polled.notice.get("seen_at") or time.time()
            self.h.event("spot-notice", attempt=attempt.number, node=k, action=polled.notice.get("action"))

    def pull_logs(self, attempt: history.Attempt, results: bool) -> None:
        """Every reachable node's run folder (its log) to outputs/nodes/attempt-N/node-K; with
        `results`, the trainer's outputs from the node rank 0 ran on, as for one instance."""
        for k, m in enumerate(self.fleet.machines):
            if self.look(m)[1] is None:
                continue  # AWS has taken it, or it does not answer
            where = self.outputs / "nodes" / f"attempt-{attempt.number}" / f"node-{k}"
            try:
                download_dir(m, runs.run_dir(m.record.remote_dir, self.plan.run), where)
            except ToolkitError as e:
                self.out(f"could not download node {k}'s log: {e}")
        if results and stages.pull(
            self.fleet.machines[self.rank0], self.plan, self.outputs, "results", self.out
        ):
            self.h.event("downloaded", what="results", node=self.rank0)

    # --- after an interruption ----------------------------------------------------------------------
    def recover(self, attempt: history.Attempt, verdict: ClusterVerdict) -> list[int]:
        """N nodes again (Fleet.restore); the nodes that are new, to set up."""
        attempt.nodes_lost = list(verdict.lost)
        return self.fleet.restore(attempt.nodes_lost)

    # --- the whole journey --------------------------------------------------------------------------
    def run(self) -> history.RunHistory:
        self.h.event("begin", nodes=self.nodes, instance_types=self.cfg.instance_types)
        try:
            self._attempts()
        except KeyboardInterrupt:
            self.on_ctrl_c()
            raise
        except ToolkitError as e:
            if self.h.status == "running":
                self.h.status = "failed"
            self.h.event("error", message=str(e))
            if not isinstance(e, (RunFailed, GaveUp)):  # those have ended the cluster already
                self.release()
            raise
        return self.h

    def _attempts(self) -> None:
        p = self.plan
        self.out(f"launching {self.nodes} nodes for {self.name}")
        self.fleet.launch_all()
        setup = list(range(self.nodes))
        while True:
            attempt = history.Attempt(number=len(self.h.attempts) + 1)
            self.h.attempts.append(attempt)
            try:
                self.prepare(setup)
                self.start(attempt)
            except ToolkitError:
                attempt.outcome = "failed"  # setup or start: a new machine would fail the same way
                raise
            self.watching = True
            verdict = self.watch(attempt)
            self.watching = False
            attempt.ended_at = history.now_iso()
            if verdict.end in ("finished", "failed"):
                attempt.outcome = verdict.end
                self.pull_logs(attempt, results=verdict.end == "finished")
                self.h.status, self.h.finished_at = verdict.end, history.now_iso()
                if not p.keep:
                    self.fleet.take_down()
                elif verdict.end == "finished":
                    self.out(self.kept())
                self.h.event(verdict.end)
                if verdict.end == "finished":
                    return
                raise RunFailed(
                    f"{verdict.why} on attempt {attempt.number}; a new cluster would fail the same way, "
                    f"so none is launched{'; ' + self.kept() if self.fleet.live() else ''}. "
                    f"The logs are in {self.outputs}/nodes/"
                )
            attempt.outcome = "preempted" if attempt.notice_seen_at else "lost"
            self.out(f"interrupted: {verdict.why}")
            self.h.event("interrupted", attempt=attempt.number, why=verdict.why, last_step=attempt.last_step)
            self.pull_logs(attempt, results=False)
            if attempt.number - 1 >= p.max_recoveries:
                self.h.status, self.h.finished_at = "gave-up", history.now_iso()
                self.fleet.take_down()
                raise GaveUp(
                    f"interrupted {attempt.number} time(s) and --max-recoveries is {p.max_recoveries}: "
                    f"giving up. The newest checkpoint is in {p.checkpoint_dir}; `fab run --nodes "
                    f"{self.nodes}` again resumes from it"
                )
            setup = self.recover(attempt, verdict)
            self.h.event("restarting", after_attempt=attempt.number, new_nodes=setup)

    def kept(self) -> str:
        ids = ", ".join(m.instance_id for m in self.fleet.live())
        return f"{ids} kept (--keep): terminate them with `fab terminate --name {self.name}`"

    def release(self) -> None:
        """After an error: nothing left running that the user does not know about. While the
        nodes train (the laptop lost sight of them: AWS or SSH failing from here) the run goes on
        and checkpoints to S3, so it is left running and named; otherwise (setup, start, a
        replacement) every member is terminated and the groups removed."""
        live = self.fleet.live()
        if not live or self.fleet.ec2 is None:
            return
        if self.plan.keep:
            self.out(self.kept())
            return
        if self.watching:
            for m in live:
                m.outcome = "left-running"
            self.out(
                f"left {', '.join(m.instance_id for m in live)} running: the run goes on in tmux on every "
                f"node. Follow it with `fab logs --name {self.name} --node K`; terminate them with "
                f"`fab terminate --name {self.name}`"
            )
            self.h.event("left-running", instance_ids=[m.instance_id for m in live])
            return
        try:
            self.fleet.take_down()
        except ToolkitError as e:
            self.out(
                f"could not terminate {', '.join(m.instance_id for m in self.fleet.live())} ({e}); "
                f"terminate them with `fab terminate --name {self.name}`"
            )

    def on_ctrl_c(self) -> None:
        self.h.status = "interrupted"
        live = self.fleet.live()
        if not live or self.fleet.ec2 is None:
            self.h.event("ctrl-c")
            return
        ids = ", ".join(m.instance_id for m in live)
        question = f"terminate {ids} (cluster {self.name}) now? [t]erminate / [l]eave running: "
        answer = self.ask(question) if self.ask else ""
        if answer.strip().lower().startswith("t"):
            self.fleet.take_down("terminated-by-user")
            decision = "terminated-by-user"
        else:
            for m in live:
                m.outcome = "left-running"
            decision = "left-running"
            self.out(
                f"left {ids} running (the run goes on in tmux on every node). Follow it with "
                f"`fab logs --name {self.name} --node K`; terminate them with "
                f"`fab terminate --name {self.name}`"
            )
        self.h.event("ctrl-c", decision=decision)
