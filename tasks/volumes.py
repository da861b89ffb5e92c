"""Tasks for the workspace volume (ec2/cloud/volumes.py): move, resize, delete, mount.

Launch creates and attaches it (volume_name in configs/aws.yaml), `fab status` lists it,
`fab terminate` keeps it. Thin: parse, call ec2/, print.
"""

from __future__ import annotations

from invoke import task

from ec2 import registry
from ec2.cloud import account, instances, volumes
from ec2.errors import ToolkitError
from ec2.remote.mount import mount_volume
from ec2.remote.ssh import Machine
from tasks.edge import aws_config, edge, machine_name


def _ec2(cfg):
    region = account.resolve_region(cfg)
    return region, account.client(cfg, "ec2", region)


def _volume_name(name: str | None, cfg) -> str:
    name = name or cfg.volume_name
    if not name:
        raise ToolkitError("which volume? pass --name VOLUME (or set volume_name in configs/aws.yaml)")
    return volumes.check_name(name)


@task(iterable=["set_"])
@edge
def volume_move(c, zone, name=None, config=None, set_=None):
    """Copy the workspace volume to another zone (snapshot); the old one goes at the copy's first attach."""
    cfg = aws_config(config, set_)
    region, ec2 = _ec2(cfg)
    owner = account.caller_arn(region, cfg.profile)
    new = volumes.move(ec2, cfg, _volume_name(name, cfg), region, zone, owner)
    print(
        f"volume {new.name} copied to {zone} as {new.volume_id}; the original is kept until the next "
        f"launch attaches the copy (it then deletes the original and the snapshot)"
    )


@task(iterable=["set_"])
@edge
def volume_resize(c, gb, name=None, config=None, set_=None):
    """Grow the workspace volume to --gb GiB (volumes only grow)."""
    cfg = aws_config(config, set_)
    region, ec2 = _ec2(cfg)
    vol, old = volumes.resize(ec2, _volume_name(name, cfg), region, int(gb))
    print(
        f"volume {vol.name} ({vol.volume_id}): {old} -> {vol.size_gb} GiB requested; "
        f"set volume_gb: {vol.size_gb}"
    )
    if vol.attached_to:
        print(
            "it is attached: once `lsblk` on the machine shows the new size (minutes), grow the filesystem "
            f"with `fab run-cmd --cmd 'sudo resize2fs $(findmnt -n -o SOURCE {cfg.volume_mount})'`"
        )


@task(iterable=["set_"])
@edge
def volume_delete(c, name=None, yes=False, config=None, set_=None):
    """Delete the workspace volume and everything on it (asks first; --yes for scripts)."""
    cfg = aws_config(config, set_)
    region, ec2 = _ec2(cfg)
    name = _volume_name(name, cfg)
    vol = volumes.find_volume(ec2, name)
    if vol is None:
        raise ToolkitError(f"no spotrun volume named {name!r} in {region}; `fab status` lists them")
    from tasks.lifecycle import confirm  # (lifecycle imports this module for status and terminate)

    confirm(
        f"delete volume {name} ({vol.volume_id}, {vol.size_gb} GiB in {vol.zone}) and all its files?", yes
    )
    volumes.delete(ec2, name, region)
    print(f"deleted volume {name} ({vol.volume_id})")


@task(iterable=["set_"])
@edge
def volume_mount(c, name=None, config=None, set_=None):
    """Mount the workspace volume attached to a machine at volume_mount (formats it only when blank)."""
    cfg = aws_config(config, set_)
    record = registry.get(machine_name(name, cfg))
    if not record.instance_id:
        raise ToolkitError(f"{record.name} is an adopted machine; spotrun attaches volumes only to its own")
    _, ec2 = _ec2(cfg)
    attached = volumes.attached_to_instances(ec2, [record.instance_id])
    if not attached:
        raise ToolkitError(
            f"no workspace volume is attached to {record.name} ({record.instance_id}); set volume_name and "
            "launch, or check `fab status`"
        )
    print(mount_volume(Machine(record), attached[0].volume_id, cfg.volume_mount))


def print_volumes(ec2) -> int:
    """The volumes section of `fab status` (with the names of the instances they are attached to)."""
    vols = volumes.list_volumes(ec2)
    if not vols:
        return 0
    names = {i.instance_id: i.name for i in instances.find_instances(ec2, states=instances.SHOWN_STATES)}
    print("volumes:")
    print(volumes.table(vols, names))
    print("* gp3 list price in us-east-1 ($0.08/GiB-month): an estimate")
    return len(vols)


def kept_volumes_note(vols) -> list[str]:
    return [
        f"kept volume {v.name} ({v.volume_id}, {v.size_gb} GiB, ${v.usd_per_month:.2f}/month); "
        f"`fab volume-delete --name {v.name} --yes` deletes it"
        for v in vols
    ]
