"""Instances as plain data, found by tag: AWS tags are the truth about what spotrun launched.

boto3's nested dicts become a frozen ``InstanceInfo`` as soon as they arrive, so status, launch and
terminate logic works on small values that tests can build by hand.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import botocore.exceptions

from common import aws
from common.aws import aws_errors
from ec2 import names, paths, registry
from ec2.errors import AwsError, InstanceGone, ToolkitError

NAME_TAG = "spotrun:name"
OWNER_TAG = "spotrun:owner"
CREATED_TAG = "spotrun:created"
# States in which an instance still exists (and may bill): a second launch under the same name is
# refused while one of these holds it.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# What status shows: live, plus the ones on their way out.
SHOWN_STATES = (*LIVE_STATES, "shutting-down")

TERMINATE_DELAY_S = 5
TERMINATE_BUDGET_S = 600


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    name: str
    state: str
    instance_type: str
    zone: str
    market: str  # "spot" | "on-demand"
    public_ip: str | None
    private_ip: str | None
    launched_at: datetime | None
    key_name: str | None = None
    owner: str | None = None
    group_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    def tag(self, key: str) -> str | None:
        return dict(self.tags).get(key)

    def address(self, which: str = "public-ip") -> str | None:
        """The address SSH dials (see AwsConfig.ssh_host)."""
        if which == "instance-id":
            return self.instance_id
        if which == "private-ip":
            return self.private_ip
        return self.public_ip


def from_boto(raw: dict) -> InstanceInfo:
    """One describe_instances instance → InstanceInfo."""
    tags = tuple(sorted((t["Key"], t["Value"]) for t in raw.get("Tags", [])))
    tag = dict(tags)
    return InstanceInfo(
        instance_id=raw["InstanceId"],
        name=tag.get(NAME_TAG) or tag.get("Name") or "",
        state=raw.get("State", {}).get("Name", "unknown"),
        instance_type=raw.get("InstanceType", ""),
        zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
        market="spot" if raw.get("InstanceLifecycle") == "spot" else "on-demand",
        public_ip=raw.get("PublicIpAddress") or None,
        private_ip=raw.get("PrivateIpAddress") or None,
        launched_at=raw.get("LaunchTime"),
        key_name=raw.get("KeyName"),
        owner=tag.get(OWNER_TAG),
        group_ids=tuple(g["GroupId"] for g in raw.get("SecurityGroups", [])),
        tags=tags,
    )


def _describe(ec2, filters: list[dict], doing: str) -> list[InstanceInfo]:
    out = []
    with aws_errors(doing):
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                out.extend(from_boto(raw) for raw in reservation["Instances"])
    return sorted(out, key=lambda i: (i.name, i.launched_at or datetime.min, i.instance_id))


def find_instances(
    ec2, name: str | None = None, states=LIVE_STATES, owner: str | None = None
) -> list[InstanceInfo]:
    """spotrun's instances (by tag), optionally one name and one owner, in the given states."""
    by_name = {"Name": f"tag:{NAME_TAG}", "Values": [name]} if name else None
    filters = [by_name or {"Name": "tag-key", "Values": [NAME_TAG]}]
    if owner:
        filters.append({"Name": f"tag:{OWNER_TAG}", "Values": [owner]})
    if states:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    return _describe(ec2, filters, f"listing spotrun instances{f' named {name!r}' if name else ''}")


def instances_using(ec2, *, group_id: str | None = None, key_name: str | None = None) -> list[InstanceInfo]:
    """Live instances (spotrun's or not) that use a security group or key pair."""
    filters = [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
    if group_id:
        filters.append({"Name": "instance.group-id", "Values": [group_id]})
    if key_name:
        filters.append({"Name": "key-name", "Values": [key_name]})
    return _describe(ec2, filters, "listing instances that use spotrun's group or key")


def describe_instance(ec2, instance_id: str) -> InstanceInfo | None:
    """The instance, or None when AWS no longer knows it."""
    with aws_errors(f"describing {instance_id}", tolerate={"InvalidInstanceID.NotFound"}):
        pages = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        found = [raw for r in pages for raw in r["Instances"]]
        return from_boto(found[0]) if found else None
    return None


def gone_check(record, profile: str | None = None) -> Callable[[], None]:
    """For Machine(still_there=...): after a dropped connection, ask AWS whether a launched
    instance still runs; if it is shutting down, terminated or unknown (a spot interruption, the
    max_hours cap, someone else), drop its local entries and raise InstanceGone: one line instead of
    a minute of retries ending in "cannot reach". Adopted machines are never asked about."""

    def check() -> None:
        if record.adopted or not record.region:
            return
        try:
            info = describe_instance(aws.client("ec2", record.region, profile), record.instance_id)
        except (ToolkitError, botocore.exceptions.BotoCoreError):
            return  # AWS cannot be asked either (the laptop is offline): go on retrying SSH
        if info is not None and info.state in ("pending", "running"):
            return
        state = info.state if info is not None else "gone"
        forget_local(record.name)
        raise InstanceGone(
            f"{record.name} ({record.instance_id}) is {state}: AWS ended it (a spot interruption, the "
            f"max_hours cap, or someone terminated it); its registry and ssh config entries are removed. "
            f"`fab launch --name {record.name}` for a new one (`fab sync` then brings back the last "
            "downloaded checkpoint)"
        )

    return check


def wait_for(ec2, waiter_name: str, instance_ids: list[str], *, delay_s: float, budget_s: float) -> None:
    """A botocore waiter with a time budget (never on an empty list: that waits forever)."""
    if not instance_ids:
        return
    attempts = max(1, int(budget_s // max(delay_s, 0.1)) + 1)
    try:
        ec2.get_waiter(waiter_name).wait(
            InstanceIds=list(instance_ids), WaiterConfig={"Delay": delay_s, "MaxAttempts": attempts}
        )
    except botocore.exceptions.WaiterError as e:
        target = waiter_name.removeprefix("instance_")
        states = _states(ec2, instance_ids)
        raise AwsError(
            f"{', '.join(instance_ids)} did not reach {target} within {budget_s:g} s (now: {states}); "
            "check the EC2 console or `fab status`, and retry",
            "WaiterTimeout" if "Max attempts" in str(e) else "WaiterFailed",
        ) from None


def _states(ec2, instance_ids: list[str]) -> str:
    with aws_errors("describing instances"):
        pages = ec2.describe_instances(InstanceIds=list(instance_ids))["Reservations"]
    return ", ".join(f"{i['InstanceId']} {i['State']['Name']}" for r in pages for i in r["Instances"])


def terminate_instances(
    ec2,
    instance_ids: list[str],
    *,
    wait: bool = True,
    budget_s: float = TERMINATE_BUDGET_S,
    delay_s: float = TERMINATE_DELAY_S,
) -> None:
    """Terminate, then (``wait``) block until AWS reports them terminated."""
    if not instance_ids:
        return
    with aws_errors(f"terminating {', '.join(instance_ids)}"):
        ec2.terminate_instances(InstanceIds=list(instance_ids))
    if wait:
        wait_for(ec2, "instance_terminated", instance_ids, delay_s=delay_s, budget_s=budget_s)


def forget_local(name: str) -> None:
    """Drop every local trace of a machine: registry entry, ~/.ssh config entry, known_hosts file,
    and its SSH control master (a later instance may get the same address)."""
    from ec2.remote import sshconfig
    from ec2.remote.ssh import close_master

    record = registry.load_all().get(name)
    if record is not None:
        try:
            close_master(record)
        except (OSError, subprocess.TimeoutExpired):
            pass  # no ssh binary, or a master that does not answer: nothing more to do
    registry.remove(name)
    sshconfig.remove_entry(name)
    if names.INSTANCE.problem(name) is None:  # a tag someone else wrote may not be a usable name
        paths.known_hosts_file(name).unlink(missing_ok=True)
