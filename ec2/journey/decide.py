"""What the laptop sees of an attempt, and what it concludes: pure functions, no AWS, no SSH.

One SSH round trip (`poll_command`) returns the run state, the watcher's preempted and notice
records and the log's tail; `parse_poll` reads it back; `decide` turns that and the instance's AWS
state into a verdict:

- finished(0)                          → finished: download results, terminate, summary;
- finished(N), N not 0 and not 75      → failed: a relaunch will not fix the command itself;
- preempted, finished(75), AWS says shutting-down/terminated/stopped, the run is gone, or SSH
  unreachable for longer than allowed  → interrupted: relaunch elsewhere and resume;
- anything else                        → watch on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from common.attempt import Outcome, TextEnum
from common.errors import STOPPED_RESUMABLE
from common.steps import last_step, resumed_step  # noqa: F401 (the laptop's import point)
from ec2.remote import runs
from ec2.remote.ssh import quote_path

GONE_STATES = ("shutting-down", "terminated", "stopping", "stopped", "gone")
_MARK = "@@spotrun@@"
# The trainer's end-of-run line for an S3 dataset (ml.data.storage.S3Traffic.line).
_S3_READ = re.compile(r"read from S3: ([\d,]+) GETs, ([\d.]+) GB, \$([\d.]+) in requests")


@dataclass(frozen=True)
class Poll:
    state: runs.RunState
    preempted: dict | None
    notice: dict | None
    log_tail: str


def poll_command(remote_dir: str, run: str) -> str:
    """One SSH round trip: the run state, the watcher's notice and preempted records, the log's tail."""
    rdir = quote_path(runs.run_dir(remote_dir, run))
    return (
        f"{runs.state_command(remote_dir, run)}; echo {_MARK}; cat {rdir}/preempted 2>/dev/null; "
        f"echo {_MARK}; cat {rdir}/notice 2>/dev/null; "
        f"echo {_MARK}; tail -c 16384 {rdir}/log 2>/dev/null; true"
    )


def parse_poll(text: str) -> Poll:
    state_text, _, rest = text.partition(_MARK)
    preempted_text, _, rest = rest.partition(_MARK)
    notice_text, _, log_tail = rest.partition(_MARK)

    def record(part: str) -> dict | None:
        try:
            return json.loads(part) if part.strip() else None
        except json.JSONDecodeError:
            return None  # caught mid-write by an older watcher: the next poll sees it whole

    return Poll(runs.parse_state(state_text), record(preempted_text), record(notice_text), log_tail)


def s3_read(log: str) -> tuple[int, float, float] | None:
    """(GETs, GB, request USD) from the trainer's last end-of-run S3 line, if the log has one."""
    found = _S3_READ.findall(log)
    if not found:
        return None
    gets, gb, usd = found[-1]
    return int(gets.replace(",", "")), float(gb), float(usd)


class End(TextEnum):
    """A verdict's end: watch on, wait for the other nodes, or the attempt is over and how."""

    WATCH = "watch"
    WAITING = "waiting"  # a node ended abnormally; the others are expected to stop at the same step
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def over(self) -> bool:
        return self in (End.FINISHED, End.FAILED, End.INTERRUPTED)

    @property
    def by_itself(self) -> bool:
        """The run ended on its own (finished or failed): no recovery would change it."""
        return self in (End.FINISHED, End.FAILED)


class NodeStatus(TextEnum):
    """One node's part in a multi-node run (node_status)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"  # its run ended resumably and the machine answers: a survivor
    LOST = "lost"  # replaced


@dataclass(frozen=True)
class Verdict:
    """`end`: watch | finished | failed | interrupted. For an interruption, `outcome` is what the
    attempt is recorded as (preempted: a notice came first; lost: no notice), `why` the line the
    user sees, and `reachable` whether the machine can still be asked for its checkpoints."""

    end: End
    why: str = ""
    outcome: Outcome | None = None
    reachable: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", End(self.end))


WATCH = Verdict(End.WATCH)


def decide(
    aws_state: str, polled: Poll | None, *, noticed: bool, unreachable_for: float | None, unreachable_s: float
) -> Verdict:
    """The verdict on one look at the attempt (`aws_state` is "gone" when AWS no longer lists it)."""
    state = polled.state.state if polled else None
    if state == "finished":
        code = polled.state.exit_code
        if code == 0:
            return Verdict(End.FINISHED)
        if code != STOPPED_RESUMABLE:
            return Verdict(End.FAILED, f"the command failed with exit {code}")
        return Verdict(End.INTERRUPTED, "the command stopped resumably (exit 75)", Outcome.LOST)
    if state == "preempted":
        return Verdict(End.INTERRUPTED, "spot interruption notice; checkpoint secured", Outcome.PREEMPTED)
    if aws_state in GONE_STATES:
        if noticed:
            return Verdict(
                End.INTERRUPTED,
                f"instance {aws_state} after a spot interruption notice",
                Outcome.PREEMPTED,
                reachable=False,
            )
        return Verdict(End.INTERRUPTED, f"instance {aws_state}", Outcome.LOST, reachable=False)
    if state == "none":
        return Verdict(End.INTERRUPTED, "the run is gone from the instance (rebooted?)", Outcome.LOST)
    if unreachable_for is not None and unreachable_for > unreachable_s:
        return Verdict(End.INTERRUPTED, f"unreachable for {unreachable_s:g} s", Outcome.LOST, reachable=False)
    return WATCH


# --- several nodes (fab run --nodes N) ---------------------------------------------------------------
def node_status(verdict: Verdict, polled: Poll | None, noticed: bool) -> NodeStatus:
    """One node's part in a multi-node run, from its own verdict: running | finished | failed |
    stopped (its run ended resumably, exit 75, with no notice on it, and the machine still answers:
    a survivor, kept for the restart) | lost (a notice on it, AWS took it back, its run vanished or
    it stopped answering: it is replaced)."""
    if verdict.end == End.WATCH:
        return NodeStatus.RUNNING
    if verdict.end.by_itself:
        return NodeStatus(verdict.end)
    if not noticed and verdict.reachable and polled is not None and polled.state.state == "finished":
        return NodeStatus.STOPPED
    return NodeStatus.LOST


@dataclass(frozen=True)
class ClusterVerdict:
    """`end`: watch | waiting (a node has ended abnormally; the others are still running and are
    expected to stop at the same step) | finished | failed | interrupted. `lost`: the nodes to
    replace."""

    end: End
    lost: tuple[int, ...] = ()
    why: str = ""
    outcome: Outcome | None = None  # an interruption: preempted (a notice on a node came first) or lost

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", End(self.end))


def cluster_verdict(statuses: list[NodeStatus]) -> ClusterVerdict:
    """The run's verdict from every node's status (node order). The restart waits until every
    node's run has ended: a run still going would hold the rendezvous and the checkpoint."""
    lost = tuple(k for k, s in enumerate(statuses) if s == NodeStatus.LOST)
    if NodeStatus.RUNNING in statuses:
        abnormal = any(s in (NodeStatus.LOST, NodeStatus.FAILED, NodeStatus.STOPPED) for s in statuses)
        return ClusterVerdict(End.WAITING if abnormal else End.WATCH, lost)
    if lost:
        # A node lost makes the others' collectives fail: their non-zero exits are no failure of
        # the command, so this is an interruption, not a failed run.
        return ClusterVerdict(End.INTERRUPTED, lost, f"node {', '.join(map(str, lost))} lost")
    if NodeStatus.FAILED in statuses:
        failed = [k for k, s in enumerate(statuses) if s == NodeStatus.FAILED]
        return ClusterVerdict(End.FAILED, why=f"the command failed on node {', '.join(map(str, failed))}")
    if all(s == NodeStatus.FINISHED for s in statuses):
        return ClusterVerdict(End.FINISHED)
    return ClusterVerdict(End.INTERRUPTED, why="the run stopped resumably (exit 75) on every node")


def fleet_verdict(
    verdicts: list[Verdict], statuses: list[NodeStatus], noticed: list[bool]
) -> Verdict | ClusterVerdict:
    """The verdict on a fleet from each node's (node order): a fleet of one is judged as its one
    node; several by cluster_verdict over their statuses."""
    if len(verdicts) == 1:
        return verdicts[0]
    verdict = cluster_verdict(statuses)
    if verdict.end == End.INTERRUPTED:
        verdict = replace(verdict, outcome=Outcome.PREEMPTED if any(noticed) else Outcome.LOST)
    return verdict


def notice_to_resumed(notice_seen_at: float | None, resumed_at: float) -> float | None:
    """Seconds from the notice the watcher saw to the replacement cluster's resume (None: no notice)."""
    return None if notice_seen_at is None else round(max(resumed_at - notice_seen_at, 0.0), 1)
