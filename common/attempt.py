"""One attempt of a run, and how it ended: the record both drivers of a run write.

An attempt is one start of the run on its instances: for `fab run` on one instance, that
instance's life; for `fab run --nodes N`, one start of torchrun on every node (the instances,
which can outlive an attempt, are recorded as members by ec2.journey.history); for a detached run,
one boot of one of its group's instances. The laptop's loop writes these into
outputs/<name>/run.json (ec2.journey.history); the detached boot writes the same entries into its
S3 record (ec2.remote.detached), so this lives in common/, the package the instance side imports
too: standard library only (the boot runs with the instance's bare Python and boto3).

Outcomes and statuses are str Enums: the JSON keeps the same strings ("preempted", "gave-up"), a
record written before them loads unchanged, and comparing with a plain string still works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from common.times import seconds_between


class TextEnum(str, Enum):
    """A str Enum that prints as its value (in f-strings too, on every Python the project runs)."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Outcome(TextEnum):
    """How an attempt (or a member instance of a cluster) ended, or where it stands."""

    STARTING = "starting"  # created, no instance yet
    LAUNCH_FAILED = "launch-failed"  # no instance came up: nothing billed, nothing to clean
    BOOTING = "booting"  # detached: the instance's boot is setting up
    SETUP_FAILED = "setup-failed"  # detached: setup failed on the instance
    RUNNING = "running"
    FINISHED = "finished"  # exit 0
    FAILED = "failed"  # the command failed (or setup did): a new instance would fail the same way
    PREEMPTED = "preempted"  # a spot notice came first; the checkpoint was secured
    LOST = "lost"  # the instance or its run went away without a notice (or stopped resumably)
    STOPPED = "stopped"  # detached: `fab stop`
    GAVE_UP = "gave-up"  # detached: the last allowed attempt was interrupted
    DEADLINE = "deadline"  # detached: max_hours passed
    NOT_STARTED = "not-started"  # detached: a boot after the run's end (a late replacement) ran nothing
    LEFT_RUNNING = "left-running"  # the laptop let go (Ctrl-C, or it lost sight): the run goes on
    TERMINATED_BY_USER = "terminated-by-user"  # Ctrl-C, then [t]erminate
    TERMINATED = "terminated"  # a cluster member ended with its run

    @property
    def interrupted(self) -> bool:
        """Ended by an interruption: a recovery followed, or --max-recoveries stopped it."""
        return self in (Outcome.PREEMPTED, Outcome.LOST)

    @property
    def open(self) -> bool:
        """Its instance may still be working on the run (the laptop can pick it up again)."""
        return self in (Outcome.RUNNING, Outcome.LEFT_RUNNING)


class RunStatus(TextEnum):
    """Where a whole run stands."""

    SUBMITTED = "submitted"  # detached: handed to the group, no instance has booted yet
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # attended: Ctrl-C; detached: between two attempts
    FINISHED = "finished"
    FAILED = "failed"
    GAVE_UP = "gave-up"
    STOPPED = "stopped"  # detached
    DEADLINE = "deadline"  # detached
    SETUP_FAILED = "setup-failed"  # detached

    @property
    def ended(self) -> bool:
        """Nothing more will run: a detached boot that finds one stops the group at once."""
        return self in (
            RunStatus.FINISHED,
            RunStatus.FAILED,
            RunStatus.STOPPED,
            RunStatus.GAVE_UP,
            RunStatus.DEADLINE,
            RunStatus.SETUP_FAILED,
        )


@dataclass
class Attempt:
    number: int
    instance_id: str | None = None
    instance_type: str | None = None
    zone: str | None = None
    market: str | None = None
    launched_at: str | None = None
    ended_at: str | None = None
    outcome: Outcome = Outcome.STARTING
    exit_code: int | None = None
    last_step: int | None = None  # the last step the log showed before the attempt ended
    resumed_step: int | None = None  # "resumed from ... at step N" (None: started fresh)
    cost_usd: float | None = None
    seconds_notice_to_safe: float | None = None
    gpus: int | None = None  # GPUs the trainer ran on (one process each); 0: the CPU
    # What the trainer read from S3 for its dataset (its end-of-run line): GETs, GB, request USD.
    s3_gets: int | None = None
    s3_gb: float | None = None
    s3_request_usd: float | None = None
    # A multi-node run (fab run --nodes N): the attempt is one start of torchrun on every node.
    nodes: int | None = None
    instance_ids: list[str] = field(default_factory=list)  # node order
    nodes_lost: list[int] = field(default_factory=list)  # the nodes replaced after it
    notice_seen_at: float | None = None  # epoch seconds the watcher saw the notice that ended it
    seconds_notice_to_resumed: float | None = None  # from the previous attempt's notice to resumed
    log_uri: str | None = None  # detached: where the boot copied the attempt's run log in S3
    # When the run began working on this attempt's machine: the trainer resumed (or, before a
    # resume line, was started). After an interruption, the billed time until then is recovery
    # (ec2.journey.ledger). `fab run` sets it when it starts the run and again when it sees the
    # resume line; a detached boot when it has started the run (it does not read the log).
    running_at: str | None = None

    def __setattr__(self, key: str, value) -> None:
        # Read back from JSON, or set from a plain string: always the Enum.
        super().__setattr__(key, Outcome(value) if key == "outcome" else value)

    @property
    def seconds(self) -> float | None:
        return seconds_between(self.launched_at, self.ended_at)

    @property
    def unended(self) -> bool:
        """Setting up or running with no end recorded yet: its instance is still billed."""
        return self.ended_at is None and self.outcome in (Outcome.BOOTING, Outcome.RUNNING)

    @classmethod
    def from_dict(cls, data: dict) -> Attempt:
        """An attempt as run.json or a detached run's state.json holds it; fields it does not know
        are dropped, and a state.json written before this record (its boots' `booted_at`) reads."""
        data = dict(data)
        if "booted_at" in data:
            data.setdefault("launched_at", data.pop("booted_at"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
