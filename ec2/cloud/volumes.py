"""The workspace volume: one EBS volume per `volume_name` that outlives spot instances.

Found by tag (`spotrun:volume` = name), never by a remembered id. The first launch creates it (gp3,
encrypted, tagged) in the zone the instance got; later launches are pinned to its zone (an EBS
volume cannot leave its Availability Zone) and reattach it. It is attached after launch, so its
DeleteOnTermination is false (the AWS default for attached volumes): `fab terminate` and a spot
interruption leave it `available`, and only `fab volume-delete` deletes it.

`fab volume-move` copies it to another zone through a snapshot. The old volume is retired (its
name tag moved to `spotrun:volume-retired`) and kept until the new one has been attached once;
that attach deletes it, and the snapshot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import botocore.exceptions

from common.aws import aws_errors
from ec2 import names
from ec2.cloud import instances
from ec2.config import AwsConfig
from ec2.errors import AwsError, CapacityError, ConfigError, ToolkitError

VOLUME_TAG = "spotrun:volume"
RETIRED_TAG = "spotrun:volume-retired"
REPLACES_TAG = "spotrun:replaces"  # on a moved volume: "vol-old snap-id" until its first attach
# The device name in the attach request. On Nitro instances (every current GPU type) the volume
# shows up as an NVMe device whatever this says; the instance finds it by the volume id (its NVMe
# serial), see ec2/remote/mount.py.
DEVICE = "/dev/sdf"
# gp3 storage, USD per GiB-month (us-east-1 list price, 3,000 IOPS and 125 MB/s included); snapshots.
GP3_USD_PER_GB_MONTH = 0.08
SNAPSHOT_USD_PER_GB_MONTH = 0.05
WAIT_DELAY_S = 3
WAIT_BUDGET_S = 300
SNAPSHOT_BUDGET_S = 3600
GONE_STATES = ("deleting", "deleted", "error")


@dataclass(frozen=True)
class VolumeInfo:
    volume_id: str
    name: str
    size_gb: int
    zone: str
    state: str  # creating | available | in-use | ...
    encrypted: bool
    attached_to: str | None  # instance id
    replaces: str | None = None  # "vol-old snap-id" of a move not yet completed

    @property
    def usd_per_month(self) -> float:
        return self.size_gb * GP3_USD_PER_GB_MONTH


def from_boto(raw: dict) -> VolumeInfo:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    attached = [
        a["InstanceId"] for a in raw.get("Attachments", []) if a.get("State") in ("attaching", "attached")
    ]
    return VolumeInfo(
        volume_id=raw["VolumeId"],
        name=tags.get(VOLUME_TAG) or tags.get(RETIRED_TAG) or "",
        size_gb=int(raw["Size"]),
        zone=raw["AvailabilityZone"],
        state=raw["State"],
        encrypted=bool(raw.get("Encrypted")),
        attached_to=attached[0] if attached else None,
        replaces=tags.get(REPLACES_TAG),
    )


def _describe(ec2, filters: list[dict], doing: str) -> list[VolumeInfo]:
    out = []
    with aws_errors(doing):
        for page in ec2.get_paginator("describe_volumes").paginate(Filters=filters):
            out.extend(from_boto(v) for v in page["Volumes"] if v["State"] not in GONE_STATES)
    return sorted(out, key=lambda v: (v.name, v.volume_id))


def find_volume(ec2, name: str) -> VolumeInfo | None:
    found = _describe(ec2, [{"Name": f"tag:{VOLUME_TAG}", "Values": [name]}], f"looking up volume {name!r}")
    if len(found) > 1:
        ids = ", ".join(v.volume_id for v in found)
        raise ToolkitError(
            f"{len(found)} volumes carry {VOLUME_TAG}={name} ({ids}); keep one: remove the tag from the "
            "others in the EC2 console"
        )
    return found[0] if found else None


def list_volumes(ec2) -> list[VolumeInfo]:
    """Every spotrun workspace volume of the region, retired ones (a move in progress) included."""
    live = _describe(ec2, [{"Name": "tag-key", "Values": [VOLUME_TAG]}], "listing workspace volumes")
    retired = _describe(ec2, [{"Name": "tag-key", "Values": [RETIRED_TAG]}], "listing workspace volumes")
    return live + retired


def check_name(name: str) -> str:
    return names.VOLUME.check(name, "volume name")


def check_reusable(ec2, cfg: AwsConfig, vol: VolumeInfo, out=print) -> VolumeInfo:
    """A volume the next launch may attach: not attached to a live instance, no smaller than asked.
    One still held by an instance on its way out (`fab terminate --no-wait`, a spot interruption)
    is waited for."""
    if vol.attached_to:
        other = instances.describe_instance(ec2, vol.attached_to)
        if other is not None and other.state not in ("shutting-down", "terminated"):
            who = f"{vol.attached_to}" + (f" ({other.name})" if other.name else "")
            raise ToolkitError(
                f"volume {vol.name} ({vol.volume_id}) is attached to {who}; terminate that instance "
                f"(`fab terminate --name {other.name or '...'}`) or use another volume_name"
            )
        state = other.state if other else "gone"
        out(f"volume {vol.name}: waiting for {vol.attached_to} ({state}) to release it")
        wait_volumes(ec2, "volume_available", [vol.volume_id])
        vol = dataclasses.replace(vol, state="available", attached_to=None)
    if cfg.volume_gb < vol.size_gb:
        raise ConfigError(
            f"volume_gb {cfg.volume_gb} is smaller than volume {vol.name} ({vol.size_gb} GiB): an EBS volume "
            f"cannot shrink; set volume_gb: {vol.size_gb}"
        )
    if cfg.volume_gb > vol.size_gb:
        out(
            f"note: volume {vol.name} is {vol.size_gb} GiB, volume_gb says {cfg.volume_gb}: grow it with "
            f"`fab volume-resize --name {vol.name} --gb {cfg.volume_gb}`"
        )
    return vol


def pin_zone(cfg: AwsConfig, vol: VolumeInfo, subnet_zone: str | None) -> AwsConfig:
    """The launch config restricted to the volume's zone (a volume cannot cross zones)."""
    move = f"`fab volume-move --name {vol.name} --zone ZONE`"
    if subnet_zone and subnet_zone != vol.zone:
        raise ConfigError(
            f"volume {vol.name} is in {vol.zone} but subnet_id {cfg.subnet_id} is in {subnet_zone}; use a "
            f"subnet in {vol.zone}, or move the volume with {move}"
        )
    if cfg.zones and vol.zone not in cfg.zones:
        raise ConfigError(
            f"volume {vol.name} is in {vol.zone}, which zones ({', '.join(cfg.zones)}) leaves out; add "
            f"{vol.zone}, or move the volume with {move}"
        )
    return dataclasses.replace(cfg, zones=[vol.zone])


def capacity_hint(error: CapacityError, vol: VolumeInfo) -> CapacityError:
    """The capacity error of a launch pinned to the volume's zone, with the way out."""
    code = (
        str(error).rsplit("[", 1)[-1].rstrip("]")
        if str(error).endswith("]")
        else "InsufficientInstanceCapacity"
    )
    return CapacityError(
        f"no capacity in {vol.zone}, where volume {vol.name} lives (a volume cannot leave its zone); retry "
        "in a few minutes, add instance types, or move the volume to a zone with capacity: "
        f"`fab volume-move --name {vol.name} --zone ZONE`",
        code,
    )


def tags_for(cfg: AwsConfig, name: str, owner: str) -> list[dict]:
    tags = dict(cfg.tags)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags.update(
        {
            "Name": f"spotrun-volume-{name}",
            VOLUME_TAG: name,
            instances.OWNER_TAG: owner,
            instances.CREATED_TAG: created,
        }
    )
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def wait_volumes(ec2, waiter_name: str, volume_ids: list[str], budget_s: float = WAIT_BUDGET_S) -> None:
    """A botocore volume waiter with a time budget (never on an empty list)."""
    if not volume_ids:
        return
    attempts = max(1, int(budget_s // WAIT_DELAY_S) + 1)
    try:
        ec2.get_waiter(waiter_name).wait(
            VolumeIds=list(volume_ids), WaiterConfig={"Delay": WAIT_DELAY_S, "MaxAttempts": attempts}
        )
    except botocore.exceptions.WaiterError:
        target = waiter_name.removeprefix("volume_").replace("_", "-")
        raise AwsError(
            f"{', '.join(volume_ids)} did not become {target} within {budget_s:g} s; check the EC2 console "
            "(Volumes) and retry",
            "WaiterTimeout",
        ) from None


def create_volume(
    ec2, cfg: AwsConfig, name: str, zone: str, owner: str, snapshot_id: str | None = None, extra_tags=()
) -> VolumeInfo:
    """A new gp3 volume, encrypted (the account's default EBS key), tagged, available."""
    params = {
        "AvailabilityZone": zone,
        "Size": int(cfg.volume_gb),
        "VolumeType": "gp3",
        "Encrypted": True,
        "TagSpecifications": [
            {"ResourceType": "volume", "Tags": tags_for(cfg, name, owner) + list(extra_tags)}
        ],
    }
    if snapshot_id:
        params["SnapshotId"] = snapshot_id
    with aws_errors(f"creating volume {name} in {zone}"):
        raw = ec2.create_volume(**params)
    wait_volumes(ec2, "volume_available", [raw["VolumeId"]])
    remember(name, ec2.meta.region_name)
    return dataclasses.replace(from_boto(raw), state="available")


def attach(ec2, vol: VolumeInfo, instance_id: str, out=print) -> VolumeInfo:
    """Attach to the instance and wait until in use; the first attach of a moved volume deletes
    the retired original and the snapshot it was made from."""
    with aws_errors(f"attaching volume {vol.name} ({vol.volume_id}) to {instance_id}"):
        ec2.attach_volume(Device=DEVICE, InstanceId=instance_id, VolumeId=vol.volume_id)
    wait_volumes(ec2, "volume_in_use", [vol.volume_id])
    if vol.replaces:
        finish_move(ec2, vol, out)
    return dataclasses.replace(vol, state="in-use", attached_to=instance_id, replaces=None)


def finish_move(ec2, vol: VolumeInfo, out=print) -> None:
    old_id, _, snapshot_id = vol.replaces.partition(" ")
    with aws_errors(f"deleting the retired volume {old_id}", tolerate={"InvalidVolume.NotFound"}):
        ec2.delete_volume(VolumeId=old_id)
    if snapshot_id:
        with aws_errors(f"deleting snapshot {snapshot_id}", tolerate={"InvalidSnapshot.NotFound"}):
            ec2.delete_snapshot(SnapshotId=snapshot_id)
    with aws_errors(f"tagging {vol.volume_id}"):
        ec2.delete_tags(Resources=[vol.volume_id], Tags=[{"Key": REPLACES_TAG}])
    out(f"volume {vol.name} moved: {vol.volume_id} attached once, so the old {old_id} is deleted")


def attached_to_instances(ec2, instance_ids: list[str]) -> list[VolumeInfo]:
    if not instance_ids:
        return []
    return _describe(
        ec2,
        [
            {"Name": "tag-key", "Values": [VOLUME_TAG]},
            {"Name": "attachment.instance-id", "Values": list(instance_ids)},
        ],
        "listing the workspace volumes of the instances",
    )


def _require(ec2, name: str, region: str) -> VolumeInfo:
    vol = find_volume(ec2, name)
    if vol is None:
        raise ToolkitError(f"no spotrun volume named {name!r} in {region}; `fab status` lists them")
    return vol


def _free(ec2, vol: VolumeInfo, doing: str) -> None:
    if vol.attached_to:
        other = instances.describe_instance(ec2, vol.attached_to)
        label = f"{vol.attached_to}" + (f" ({other.name})" if other and other.name else "")
        raise ToolkitError(
            f"cannot {doing} volume {vol.name}: it is attached to {label}; terminate that instance first"
        )


def delete(ec2, name: str, region: str) -> VolumeInfo:
    vol = _require(ec2, name, region)
    _free(ec2, vol, "delete")
    with aws_errors(f"deleting volume {name} ({vol.volume_id})"):
        ec2.delete_volume(VolumeId=vol.volume_id)
    remember(name, None)
    return vol


def resize(ec2, name: str, region: str, gb: int) -> tuple[VolumeInfo, int]:
    """Grow the volume to `gb` GiB (EBS volumes only grow); returns (volume, old size)."""
    vol = _require(ec2, name, region)
    if gb < vol.size_gb:
        raise ConfigError(f"volume {name} is {vol.size_gb} GiB; an EBS volume cannot shrink (asked for {gb})")
    if gb == vol.size_gb:
        raise ConfigError(f"volume {name} is already {gb} GiB; pass a larger --gb")
    with aws_errors(f"resizing volume {name} ({vol.volume_id}) to {gb} GiB"):
        ec2.modify_volume(VolumeId=vol.volume_id, Size=int(gb))
    return dataclasses.replace(vol, size_gb=int(gb)), vol.size_gb


def move(ec2, cfg: AwsConfig, name: str, region: str, zone: str, owner: str, out=print) -> VolumeInfo:
    """Snapshot the volume, make a copy in `zone`, retire the original (kept until the copy's
    first attach, which deletes it and the snapshot)."""
    vol = _require(ec2, name, region)
    _free(ec2, vol, "move")
    if vol.zone == zone:
        raise ConfigError(f"volume {name} is already in {zone}")
    if vol.replaces:
        raise ToolkitError(
            f"volume {name} ({vol.volume_id}) is itself a move not yet attached; launch once to finish it"
        )
    with aws_errors(f"listing the zones of {region}"):
        zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    if zone not in zones:
        raise ConfigError(f"zone {zone!r} is not in {region} ({', '.join(zones)}); pick one of those")
    out(
        f"snapshotting {vol.volume_id} ({vol.size_gb} GiB in {vol.zone}); "
        "this takes a while for a full volume"
    )
    with aws_errors(f"snapshotting volume {name}"):
        snap = ec2.create_snapshot(
            VolumeId=vol.volume_id,
            Description=f"spotrun volume-move {name} {vol.zone} -> {zone}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags_for(cfg, name, owner)}],
        )
    attempts = max(1, int(SNAPSHOT_BUDGET_S // 15) + 1)
    try:
        ec2.get_waiter("snapshot_completed").wait(
            SnapshotIds=[snap["SnapshotId"]], WaiterConfig={"Delay": 15, "MaxAttempts": attempts}
        )
    except botocore.exceptions.WaiterError:
        raise AwsError(
            f"snapshot {snap['SnapshotId']} of volume {name} did not complete within {SNAPSHOT_BUDGET_S} s; "
            "the original volume is untouched: retry `fab volume-move` later",
            "WaiterTimeout",
        ) from None
    sized = dataclasses.replace(cfg, volume_gb=vol.size_gb)
    replaces = [{"Key": REPLACES_TAG, "Value": f"{vol.volume_id} {snap['SnapshotId']}"}]
    # Retire the original first: two volumes may never answer to the same name.
    with aws_errors(f"retiring {vol.volume_id}"):
        ec2.create_tags(Resources=[vol.volume_id], Tags=[{"Key": RETIRED_TAG, "Value": name}])
        ec2.delete_tags(Resources=[vol.volume_id], Tags=[{"Key": VOLUME_TAG}])
    try:
        new = create_volume(ec2, sized, name, zone, owner, snap["SnapshotId"], replaces)
    except ToolkitError:
        with aws_errors(f"restoring the name of {vol.volume_id}"):
            ec2.create_tags(Resources=[vol.volume_id], Tags=[{"Key": VOLUME_TAG, "Value": name}])
            ec2.delete_tags(Resources=[vol.volume_id], Tags=[{"Key": RETIRED_TAG}])
        raise
    return new


def table(vols: list[VolumeInfo], names: dict[str, str]) -> str:
    """The volumes section of `fab status` (a pure function); `names`: instance id -> name."""
    header = ("VOLUME", "ID", "SIZE", "ZONE", "STATE", "ATTACHED TO", "$/MONTH", "")
    lines = [header]
    for v in vols:
        where = "-"
        if v.attached_to:
            where = v.attached_to + (f" ({names[v.attached_to]})" if names.get(v.attached_to) else "")
        note = ""
        if v.replaces:
            note = f"<- moved copy; {v.replaces.split()[0]} is deleted at its first attach"
        elif _retired(v, vols):
            note = "<- retired by volume-move; kept until the copy is attached"
        lines.append(
            (
                v.name,
                v.volume_id,
                f"{v.size_gb} GiB",
                v.zone,
                v.state,
                where,
                f"${v.usd_per_month:.2f}*",
                note,
            )
        )
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(header))]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _retired(v: VolumeInfo, vols: list[VolumeInfo]) -> bool:
    return any(o.replaces and o.replaces.split()[0] == v.volume_id for o in vols)


# ---- the launch's two steps (ec2/cloud/launch.py): before choosing a zone, after the instance runs ----


def prepare(ec2, cfg: AwsConfig, region: str, out=print) -> VolumeInfo | None:
    """Before a launch: the workspace volume, checked (None: the launch creates it)."""
    name = check_name(cfg.volume_name)
    vol = find_volume(ec2, name)
    if vol is None:
        elsewhere = _regions_holding_elsewhere(cfg, name, region)
        if elsewhere:
            raise ConfigError(
                f"volume {name} is in {', '.join(elsewhere)}, not in {region}: an EBS volume cannot leave "
                f"its region; launch there (--set region={elsewhere[0]}) or choose another volume_name"
            )
        out(f"volume {name}: none yet; this launch creates it ({cfg.volume_gb} GiB gp3, encrypted)")
        return None
    vol = check_reusable(ec2, cfg, vol, out)
    out(f"volume {name}: {vol.volume_id} ({vol.size_gb} GiB) in {vol.zone}, so the instance goes there")
    return vol


def _regions_holding_elsewhere(cfg: AwsConfig, name: str, region: str) -> list[str]:
    """Where this laptop created a volume of that name, if not here, and AWS confirms it is still
    there (one call). Not a scan of every region: on moto's server that costs a minute, and on AWS
    it is a call per region for every first launch."""
    from common import aws

    other = remembered_regions().get(name)
    if not other or other == region:
        return []
    try:
        return [other] if find_volume(aws.client("ec2", other, cfg.profile), name) else []
    except AwsError:
        return []  # a region this account cannot read now cannot hold a volume it can use


def _memory_file():
    from ec2 import paths

    return paths.spotrun_home() / "volumes.json"


def remembered_regions() -> dict[str, str]:
    import json

    try:
        data = json.loads(_memory_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember(name: str, region: str | None) -> None:
    """Note (or with None, forget) the region of a volume this laptop created: a local cache."""
    from common.atomic import atomic_write_json

    known = remembered_regions()
    if region:
        known[name] = region
    else:
        known.pop(name, None)
    _memory_file().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(_memory_file(), known)


def bring_up(ec2, cfg: AwsConfig, vol: VolumeInfo | None, instance_id: str, zone: str, owner: str, out=print):
    """After the instance runs: create the volume (first launch) in its zone, and attach it."""
    if vol is None:
        vol = create_volume(ec2, cfg, cfg.volume_name, zone, owner)
        out(f"created volume {vol.name}: {vol.volume_id} ({vol.size_gb} GiB gp3, encrypted) in {zone}")
    if vol.zone != zone:  # pin_zone prevents this; AWS would refuse the attach (InvalidVolume.ZoneMismatch)
        raise ToolkitError(f"volume {vol.name} is in {vol.zone} but the instance in {zone}; this is a bug")
    vol = attach(ec2, vol, instance_id, out)
    out(f"attached volume {vol.name} ({vol.volume_id}) to {instance_id}")
    return vol
