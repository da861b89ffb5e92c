"""The run history of `fab run` on the laptop: outputs/<name>/run.json, rewritten atomically after
every event, so a crash (or Ctrl-C) at any moment leaves a whole file that says what happened.

Plain data: one RunHistory holding its Attempts (common.attempt: one per start of the run) and,
for a cluster, its Members (one per instance), and a list of events. The
summary the user reads at the end is ec2.journey.report.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import atomic_write_json
from common.attempt import Attempt, Outcome, RunStatus
from common.times import now_iso, seconds_between


@dataclass
class Member:
    """One instance of a multi-node run: node `node` from its launch to its termination (a
    survivor spans several attempts, so instance time and cost are counted per member)."""

    node: int
    instance_id: str
    instance_type: str | None = None
    zone: str | None = None
    market: str | None = None
    launched_at: str | None = None
    ended_at: str | None = None
    outcome: Outcome = Outcome.RUNNING  # running | lost | terminated | left-running | terminated-by-user
    cost_usd: float | None = None

    def __setattr__(self, key: str, value) -> None:
        super().__setattr__(key, Outcome(value) if key == "outcome" else value)

    @property
    def seconds(self) -> float | None:
        return seconds_between(self.launched_at, self.ended_at)


@dataclass
class RunHistory:
    name: str
    run: str = "train"
    command: str = ""
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    status: RunStatus = RunStatus.RUNNING  # running | finished | failed | gave-up | interrupted
    attempts: list[Attempt] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    path: str | None = None
    nodes: int = 1
    members: list[Member] = field(default_factory=list)  # a multi-node run's instances
    # Where the run's checkpoints go (`fab rehearse` needs them in S3 before it interrupts anything).
    checkpoint_dir: str | None = None

    def __setattr__(self, key: str, value) -> None:
        super().__setattr__(key, RunStatus(value) if key == "status" else value)

    # --- derived figures -------------------------------------------------------------------------
    @property
    def total_cost_usd(self) -> float | None:
        costs = [x.cost_usd for x in [*self.attempts, *self.members] if x.cost_usd is not None]
        return sum(costs) if costs else None

    def steps_lost(self) -> list[int]:
        """Per interruption: the last step logged before it minus the step the next attempt resumed at."""
        lost = []
        for before, after in zip(self.attempts, self.attempts[1:], strict=False):
            if before.last_step is None:
                continue
            lost.append(max(before.last_step - (after.resumed_step or 0), 0))
        return lost

    # --- writing --------------------------------------------------------------------------------------
    def event(self, kind: str, at: str | None = None, **detail) -> None:
        """Record an event, at `at` (a time already recorded elsewhere) or now."""
        self.events.append({"at": at or now_iso(), "event": kind, **detail})
        self.save()

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("path")
        data["total_cost_usd"] = self.total_cost_usd
        data["steps_lost"] = self.steps_lost()
        return data

    def save(self) -> None:
        if self.path:
            atomic_write_json(self.path, self.to_dict())


def history_path(outputs: Path) -> Path:
    return outputs / "run.json"


def load(path: Path) -> RunHistory:
    data = json.loads(path.read_text())
    attempts = [Attempt.from_dict(a) for a in data.pop("attempts", [])]
    members = [
        Member(**{k: v for k, v in m.items() if k in Member.__dataclass_fields__})
        for m in data.pop("members", [])
    ]
    fields = RunHistory.__dataclass_fields__
    return RunHistory(
        **{k: v for k, v in data.items() if k in fields}, attempts=attempts, members=members, path=str(path)
    )
