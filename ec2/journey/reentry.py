"""Attended `fab run` re-entry: when outputs/<name>/run.json records a journey still running (the
laptop process was killed, or left the instance running on Ctrl-C) and its instance is alive,
`fab run --name <name>` picks that attempt up and goes on watching it: no refusal ("an instance
named X already exists") and no second machine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import aws
from common.attempt import Outcome, RunStatus
from ec2 import registry
from ec2.cloud import instances, keys, launch
from ec2.config import AwsConfig
from ec2.errors import ToolkitError
from ec2.journey import history
from ec2.remote.ssh import Machine

ALIVE = ("pending", "running")
# FAILED too: an error while watching (the laptop lost sight of AWS or SSH) marks the run failed
# but leaves its instances running, the attempt unended, and says `fab run` again picks it up.
OPEN_STATUSES = (RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.FAILED)


@dataclass
class PickedUp:
    history: history.RunHistory
    attempt: history.Attempt
    machine: Machine
    ec2: object


def open_attempt(h: history.RunHistory) -> history.Attempt | None:
    """The last attempt, when the journey was never closed and that attempt has an instance."""
    if h.status not in OPEN_STATUSES or not h.attempts:
        return None
    last = h.attempts[-1]
    if not last.outcome.open or last.ended_at or not last.instance_id:
        return None
    return last


def machine_for(cfg: AwsConfig, info: instances.InstanceInfo, region: str) -> Machine:
    """The found instance as a Machine: its registry record, or a new one registered (another
    laptop, or a registry entry since replaced)."""
    try:
        record = registry.get(info.name)
    except ToolkitError:
        record = None
    if record is None or record.instance_id != info.instance_id:
        key_path = str(keys.private_key_path(cfg.key_name, cfg.import_public_key))
        record = launch.make_record(cfg, info, region, key_path)
        launch.register_found(record)
    return Machine(record)


def pick_up(cfg: AwsConfig, name: str, outputs: Path, out: Callable[[str], None] = print) -> PickedUp | None:
    path = history.history_path(outputs)
    if not path.is_file():
        return None
    h = history.load(path)
    attempt = open_attempt(h)
    if attempt is None or h.name != name:
        return None
    region = aws.region_of(cfg.region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    info = instances.describe_instance(ec2, attempt.instance_id)
    if info is None or info.state not in ALIVE:
        return None
    out(
        f"picking up run {name}: attempt {attempt.number} on {info.instance_id} ({info.instance_type}, "
        f"{info.zone}) is still {info.state}; watching it again"
    )
    attempt.outcome = Outcome.RUNNING
    return PickedUp(h, attempt, machine_for(cfg, info, region), ec2)
