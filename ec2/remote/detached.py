"""A detached run's record in S3, shared by the laptop (`fab run --detach`, `fab watch`, `fab stop`)
and every instance's boot (ec2.remote.boot): what to run, the guards (attempts, deadline), and one
entry per attempt. It lives under the run's root prefix, beside the checkpoints:

    <root>/state.json             this record (the boot reads it at every launch)
    <root>/bundle-<sha256>.tar.gz the code, exactly what `fab sync` sends (ec2.cloud.bundle)
    <root>/logs/attempt-<n>.log   each attempt's run log, copied when the attempt ends
    <root>/outputs/               the trainer's local output_dir (logs, metrics), likewise

Only one instance of the group runs at a time (max 1, Capacity Rebalance off), so the boot's
read-modify-write of state.json has no concurrent writer but a user's `fab stop`, which only sets
`stop_requested` and is read again before the end is recorded.

Its attempts are common.attempt's Attempt, the entry run.json holds too (one per boot; launched_at
is when the boot began), its status a RunStatus: the laptop's summary, `fab watch` and `fab status`
read them as they read `fab run`'s history. A record written before (`booted_at`, plain strings)
reads the same.

Plain data: standard library, boto3 and common/ only (it runs with the instance's Python).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import botocore.exceptions

from common.attempt import Attempt, RunStatus
from common.s3uri import split_s3
from common.times import now_iso

STATE_FILE = "state.json"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def root_for(checkpoint_dir: str, name: str) -> str:
    """The run's root prefix: a sibling of the checkpoint folder, so the instance role's S3
    grant covers both with one prefix each and the checkpoint store never lists our files."""
    return f"{checkpoint_dir.rstrip('/')}-spotrun-{name}"


@dataclass
class DetachedRun:
    name: str
    group: str
    region: str
    root: str  # s3://bucket/prefix of this record, the bundle and the logs
    command: str
    run: str = "train"
    # The trainer's config and overrides: the boot builds the command on its instance, one
    # process per GPU there (or `gpus`), as `fab run` does. Without them `command` runs as it is.
    train_config: str | None = None
    overrides: list[str] = field(default_factory=list)
    gpus: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    watcher_args: list[str] = field(default_factory=list)
    output_dir: str | None = None
    checkpoint_dir: str | None = None
    remote_dir: str = "~/spotrun"
    login_user: str = "ubuntu"
    setup_python: str | None = None  # a ready python instead of the venv (tests, prepared images)
    require_gpu: bool = True
    max_recoveries: int = 3
    submitted_at: str = field(default_factory=now_iso)
    max_hours: float = 12.0
    bundle_uri: str | None = None
    status: RunStatus = RunStatus.SUBMITTED
    stop_requested: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    # `fab run --detach --nodes N` (ec2/remote/boot_nodes.py): N groups of one, the trainer under
    # torchrun on each, built on the instance from train_config and overrides (above; `gpus`:
    # trainer processes per node, None: one per GPU present); 1: one group, `command`.
    nodes: int = 1
    rdzv_port: int = 29400
    join_timeout_s: float = 1200.0  # how long the members wait for each other before an attempt
    # The run's budget (configs/aws.yaml, docs/budget.md "Detached runs"), kept by each boot
    # (ec2.remote.spend). `finish_by` is the config's `deadline` key (the `deadline` property below
    # is max_hours' end); `total_steps` and the interruption figures are resolved at submit, since
    # the boot reads no train config and no run records.
    on_demand_after: int | None = None
    max_cost_usd: float | None = None
    finish_by: str | None = None
    total_steps: int | None = None
    interruptions_per_hour: float | None = None
    recovery_s: float | None = None
    checkpoint_every: int | None = None  # steps between saves of last.pt
    on_demand_usd: dict[str, float] = field(default_factory=dict)  # the group's types, at submit
    prioritized: bool = False  # choose_by: run_cost (the on-demand allocation strategy)
    on_demand: bool = False  # the group was switched to on-demand (market or a boot's decision)
    events: list[dict] = field(default_factory=list)  # {at, event, line, ...}: what `fab watch` says

    def __setattr__(self, key: str, value) -> None:
        # Read back from JSON, or set from a plain string: always the Enum.
        super().__setattr__(key, RunStatus(value) if key == "status" else value)

    @property
    def deadline(self) -> datetime:
        return parse_iso(self.submitted_at) + timedelta(hours=self.max_hours)

    def seconds_left(self, now: datetime | None = None) -> float:
        return (self.deadline - (now or datetime.now(timezone.utc))).total_seconds()

    @property
    def max_attempts(self) -> int:
        return 1 + self.max_recoveries

    @property
    def ended(self) -> bool:
        return self.status.ended

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DetachedRun:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["attempts"] = [Attempt.from_dict(a) for a in data.get("attempts", [])]
        return cls(**data)


def outputs_uri(root: str) -> str:
    """Where each boot copies the trainer's local output_dir when its attempt ends."""
    return f"{root.rstrip('/')}/outputs"


def state_uri(root: str) -> str:
    return f"{root.rstrip('/')}/{STATE_FILE}"


def key_of(root: str, *parts: str) -> tuple[str, str]:
    bucket, prefix = split_s3(root)
    return bucket, "/".join(p for p in (prefix, *parts) if p)


def load(s3, root: str) -> DetachedRun | None:
    """The record, or None when there is none (a run never submitted, or cleaned up)."""
    bucket, key = key_of(root, STATE_FILE)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return DetachedRun.from_json(body.decode())


def save(s3, state: DetachedRun) -> None:
    # One PUT replaces the object whole: a reader sees the old record or the new, never half.
    bucket, key = key_of(state.root, STATE_FILE)
    s3.put_object(Bucket=bucket, Key=key, Body=state.to_json().encode(), ContentType="application/json")


def put_text(s3, root: str, relative: str, text: str) -> str:
    bucket, key = key_of(root, relative)
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode())
    return f"s3://{bucket}/{key}"


# What the ledger reads from an attempt's log is at its ends: the step it resumed at near the start,
# its last step and the trainer's S3 read line at the end. A long run's log is megabytes, and
# `fab status`/`fab watch` read every attempt's: its first and last 256 KiB are enough.
LOG_END_BYTES = 256 * 1024


def get_ends(s3, uri: str, size: int = LOG_END_BYTES) -> str | None:
    """An S3 text object whole when it is at most ``size`` bytes, else its first and last ``size``
    bytes in whole lines with a "..." line between (two ranged GETs); None when it cannot be
    read."""
    bucket, key = split_s3(uri)
    try:
        last = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{size}")
        tail = last["Body"].read()
        total = int(last.get("ContentRange", "/0").rsplit("/", 1)[1] or 0)
        if total <= len(tail):
            return tail.decode(errors="replace")
        head = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{size - 1}")["Body"].read()
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") == "InvalidRange":
            return ""  # an empty object: S3 satisfies no range of it
        return None
    whole_lines = head.rpartition(b"\n")[0], tail.partition(b"\n")[2]  # the cut lines dropped
    return (whole_lines[0] + b"\n...\n" + whole_lines[1]).decode(errors="replace")
