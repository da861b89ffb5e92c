"""Tasks for an instance's life: launch, status, terminate, cleanup, allow-my-ip.

Each reads configs/aws.yaml (`--config PATH`, repeatable `--set key=value`). Thin: parse, call
ec2/, print; expected failures become one line and an exit code through tasks.edge.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from invoke import task

from common import guard
from ec2 import doctor, registry
from ec2 import status as status_mod
from ec2.cloud import account, cluster, instances, network, volumes
from ec2.cloud import cleanup as cleanup_module
from ec2.cloud import launch as launching
from ec2.errors import InstanceNotFound, ToolkitError
from ec2.journey import detached_groups as detached
from ec2.remote import sshconfig
from tasks.edge import aws_config, edge, machine_name
from tasks.volumes import kept_volumes_note, print_volumes


def _ec2(cfg):
    region = account.resolve_region(cfg)
    return region, account.client(cfg, "ec2", region)


def confirm(question: str, yes: bool) -> None:
    """Ask on the terminal; without one, refuse (a script must say --yes)."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise ToolkitError(f"{question} needs confirmation and there is no terminal to ask on; pass --yes")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise ToolkitError("not confirmed; nothing was changed")


@task(iterable=["set_"])
@edge
def launch(
    c,
    name=None,
    no_wait=False,
    keep_on_failure=False,
    no_preflight=False,
    nodes=1,
    train_config=None,
    args="",
    config=None,
    set_=None,
):
    """Launch a spot GPU instance (cheapest type/zone with capacity; --nodes N: a cluster), wait for SSH.

    With choose_by: run_cost, types are ordered by the whole run's cost for --train-config (default
    configs/rnn_args.yaml) from its `fab bench` results."""
    cfg = aws_config(config, set_)
    if cfg.choose_by == "run_cost":
        import shlex

        from ec2.journey import costrank
        from ml.config import load_train_config

        cfg = costrank.apply(
            cfg, load_train_config(train_config or "configs/rnn_args.yaml", shlex.split(args))
        )
    name = machine_name(name, cfg)
    launching.refuse_replacing(name)  # local and at once: before the preflight asks AWS anything
    if not no_preflight:
        doctor.preflight(cfg, name, doctor.needs_for(cfg))
    if int(nodes) > 1:
        records = cluster.launch_cluster(cfg, name, int(nodes), wait_ssh=not no_wait)
        names = " ".join(r.name for r in records)
        print(
            f"ready: {names}; `fab setup --name {name} --nodes {nodes}`, then `fab train ... --nodes {nodes}`"
        )
        return
    record = launching.launch(cfg, name, wait_ssh=not no_wait, keep_on_failure=keep_on_failure)
    if no_wait:
        # Running is not reachable: sshd comes up a minute or so after boot.
        print(f"running (SSH not waited for): in a minute, `fab setup --name {record.name}`")
    else:
        print(f"ready: `ssh {sshconfig.host_alias(record.name)}`, or `fab setup --name {record.name}`")


@task(iterable=["set_"])
@edge
def status(c, all_regions=False, no_runs=False, config=None, set_=None):
    """Table of spotrun instances (by tag): type, zone, market, uptime, $/h, cost so far, run state."""
    cfg = aws_config(config, set_)
    now = datetime.now(UTC)
    shown = 0
    for region in account.regions(cfg, all_regions):
        report = status_mod.collect(
            account.client(cfg, "ec2", region), region, now=now, check_runs=not no_runs
        )
        for name in report.updated:
            print(f"{name}: address refreshed from AWS")
        if report.rows:
            shown += len(report.rows)
            print(f"{region}:")
            print(status_mod.table(report.rows, now))
        for line in report.ledgers:
            print(line)
        for row in report.rows:
            if row.note:
                print(
                    f"note: {row.info.name} ({row.info.instance_id}) is not in the local registry; "
                    f"`fab terminate --name {row.info.name}` if it is unwanted"
                )
        for rec in report.missing:
            print(
                f"note: registry entry {rec.name} points at {rec.instance_id}, which no longer runs; "
                f"`fab forget --name {rec.name}` drops it"
            )
        for line in detached.status_lines(cfg, region):
            shown += 1
            print(line)
        if any(r.estimate for r in report.rows):
            print("* on-demand list price (us-east-1, from a table): an estimate")
        shown += print_volumes(account.client(cfg, "ec2", region))
    if not shown:
        print(f"no spotrun instances in {'any region' if all_regions else account.regions(cfg, False)[0]}")


@task(iterable=["set_"])
@edge
def terminate(c, name=None, all_=False, yes=False, no_wait=False, config=None, set_=None):
    """Terminate an instance by --name (or --all of them), wait, and drop its local entries."""
    # Both flags: never resolved towards the larger loss (every instance).
    guard.exclusive(
        {"--all": all_, "--name": name}, "--all ends every spotrun instance in the region, --name one"
    )
    cfg = aws_config(config, set_)
    region, ec2 = _ec2(cfg)
    cluster_name = None
    if all_:
        # Detached runs' groups first: they would replace the instances terminated below.
        groups = detached.group_names(cfg, region)
        if groups:
            confirm(f"delete the Auto Scaling groups of detached runs {', '.join(groups)} in {region}?", yes)
            for group_name in groups:
                detached.remove_group(cfg, region, group_name, out=print)
        targets = instances.find_instances(ec2)
        if not targets:
            print(f"no live spotrun instances in {region}")
            return
    else:
        name = machine_name(name, cfg)
        targets = instances.find_instances(ec2, name)
        # A detached run's group would replace the instance: the group (and template) go first.
        if detached.has_group(cfg, region, name):
            confirm(
                f"delete detached run {name}'s Auto Scaling group and terminate its instances in {region}?",
                yes,
            )
            detached.remove_group(cfg, region, name)
            for info in targets:
                instances.forget_local(info.name)
            return
        if not targets and (targets := cluster.members(ec2, name)):
            cluster_name = name
        elif not targets:
            _forget_gone(name, region)
            return
    listing = ", ".join(f"{i.name} ({i.instance_id}, {i.instance_type}, {i.state})" for i in targets)
    confirm(f"terminate {listing} in {region}?", yes)
    ids = [i.instance_id for i in targets]
    kept = volumes.attached_to_instances(ec2, ids)  # DeleteOnTermination is off: they stay
    print(
        f"terminating {', '.join(ids)}" + ("" if no_wait else "; waiting until AWS reports them terminated")
    )
    instances.terminate_instances(ec2, ids, wait=not no_wait)
    for info in targets:
        instances.forget_local(info.name)
        print(f"terminated {info.name} ({info.instance_id}); registry and ssh config entries removed")
    if cluster_name and not no_wait:  # AWS keeps groups in use until their instances are gone
        cluster.remove_shared(ec2, cfg, cluster_name)
        print(f"removed cluster {cluster_name}'s placement group and members' security group")
    for line in kept_volumes_note(kept):
        print(line)


def _forget_gone(name: str, region: str) -> None:
    record = registry.load_all().get(name)
    if record is None:
        raise InstanceNotFound(f"no live spotrun instance named {name!r} in {region}; see `fab status`")
    if record.adopted:
        raise ToolkitError(
            f"{name} is an adopted machine spotrun did not launch; `fab forget --name {name}` drops it"
        )
    if record.region and record.region != region:
        # Not found here says nothing about the instance its record points at, elsewhere.
        raise InstanceNotFound(
            f"no spotrun instance named {name!r} in {region}; its record points at {record.instance_id} "
            f"in {record.region}: `fab terminate --name {name} --set region={record.region}`"
        )
    instances.forget_local(name)
    print(f"no live instance named {name!r} in {region}; dropped its stale local entries")


@task(iterable=["set_"])
@edge
def cleanup(c, yes=False, config=None, set_=None):
    """Delete spotrun's IAM roles, security group and key pair once unused (--yes: the .pem too)."""
    cfg = aws_config(config, set_)
    region = account.resolve_region(cfg)
    detached.leftovers(cfg, region)
    cleanup_module.account_leftovers(cfg, region, delete_key_file=yes)


@task(iterable=["set_"])
@edge
def allow_my_ip(c, config=None, set_=None):
    """Point spotrun's SSH rule at your current address (revokes its old ones)."""
    cfg = aws_config(config, set_)
    region = account.resolve_region(cfg)
    owner = account.caller_arn(region, cfg.profile)
    group_id, revoked, added = network.allow_my_ip(account.client(cfg, "ec2", region), cfg, owner)
    for cidr in revoked:
        print(f"revoked SSH from {cidr} on {group_id}")
    print(f"SSH allowed from {added} on {group_id}")
