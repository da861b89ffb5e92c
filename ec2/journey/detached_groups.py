"""The Auto Scaling groups of detached runs in a region, seen from the laptop: one status line per
run (`fab status`), the names (`fab terminate --all`), removing one with its launch template
(`fab terminate`, before any instance: the group would replace it), and what `fab cleanup`
removes: groups of runs that ended with nothing left in them, templates whose group is gone."""

from __future__ import annotations

from collections.abc import Callable

from common import aws
from ec2.cloud import asg, instances
from ec2.config import AwsConfig
from ec2.journey import detach, detach_nodes, ledger
from ec2.remote import detached as record

Say = Callable[[str], None]


def has_group(cfg: AwsConfig, region: str, name: str) -> bool:
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    return asg.describe_group(autoscaling, name) is not None or bool(
        detach_nodes.member_groups(autoscaling, name)
    )


def group_names(cfg: AwsConfig, region: str) -> list[str]:
    """The run names of every detached run's group in the region."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    return [
        g.tags.get(instances.NAME_TAG, g.name) for g in asg.spotrun_groups(autoscaling, instances.NAME_TAG)
    ]


def remove_group(cfg: AwsConfig, region: str, name: str, out: Say = print) -> bool:
    """Delete a detached run's group (forcing its instances) and its template: True if there was
    one. `fab terminate` calls it before it terminates instances (else the group would replace them)."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    # A detached cluster: its member groups (NAME-0..N-1) and what they share.
    if asg.describe_group(autoscaling, name) is None and detach_nodes.remove(cfg, region, name, out=out):
        detach_nodes.remove_shared_when_unused(cfg, region, name, out=out)
        return True
    gone = asg.delete_group(autoscaling, name)
    if gone:
        out(f"deleted Auto Scaling group {asg.group_name(name)} (its instances are terminated with it)")
    if asg.delete_template(ec2, name):
        out(f"deleted launch template {asg.template_name(name)}")
    return gone


def leftovers(cfg: AwsConfig, region: str, out: Say = print) -> None:
    """`fab cleanup`: groups of runs that ended with nothing left in them, and templates whose
    group is gone."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    groups = {g.name: g for g in asg.spotrun_groups(autoscaling, instances.NAME_TAG)}
    for g in groups.values():
        if g.desired == 0 and not g.instance_ids:
            remove_group(cfg, region, g.tags.get(instances.NAME_TAG, g.name.removeprefix("spotrun-")), out)
    detach_nodes.leftover_shared(cfg, region, out=out)
    for name in asg.spotrun_template_names(ec2, instances.NAME_TAG):
        if asg.group_name(name) not in groups and asg.delete_template(ec2, name):
            out(f"deleted launch template {asg.template_name(name)} (its group is gone)")


def status_lines(cfg: AwsConfig, region: str) -> list[str]:
    """`fab status`: a line per detached run (group, current instance, attempt n of max, state,
    cost so far), then its ledger so far (ec2.journey.ledger), as printed."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    groups = asg.spotrun_groups(autoscaling, instances.NAME_TAG)
    lines = detach_nodes.status_lines(cfg, groups)
    for g in groups:
        if detach_nodes.RUN_TAG in g.tags:
            continue  # a member of a detached cluster: its run's line is above
        name = g.tags.get(instances.NAME_TAG, g.name)
        d = detach.Detached(cfg, name, root=g.tags.get(asg.ROOT_TAG))
        state = record.load(d.s3, d.root()) if d.root() else None
        current = ",".join(g.instance_ids) or "-"
        failed = f", boot failed: {g.tags[asg.FAILURE_TAG]}" if asg.FAILURE_TAG in g.tags else ""
        if state is None:
            lines.append(
                f"detached run {name}: group {g.name}, instance {current}, desired {g.desired}, "
                f"no run record{failed}"
            )
            continue
        h = d.history(state)
        cost = f"${h.total_cost_usd:.4f}" if h.total_cost_usd is not None else "?"
        lines.append(
            f"detached run {name}: group {g.name}, instance {current}, attempt {len(state.attempts)} of "
            f"{state.max_attempts}, {state.status}, cost so far {cost}{failed}"
        )
        lines += ledger.lines(h)
    return lines
