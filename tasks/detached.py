"""Detached runs (`fab run --detach`): the run is kept alive by an Auto Scaling group of one and
each instance's boot, with no laptop watching. These tasks follow (`watch`), stop (`stop`) and
remove (`terminate`, `cleanup` through tasks/lifecycle) such runs; the logic is in
ec2/journey/detach.py."""

from __future__ import annotations

import time

from invoke import task

from common import aws
from common.checks import Range
from ec2.cloud import asg, instances
from ec2.config import AwsConfig
from ec2.errors import ToolkitError
from ec2.journey import detach, detach_nodes
from ec2.journey.stages import Plan
from ec2.remote import detached as record
from ec2.remote import detached_members, runs
from tasks.edge import aws_config, edge, machine_name, number


def _say(line: str) -> None:
    print(line, flush=True)


def submit(cfg: AwsConfig, name: str, plan: Plan, *, instance_profile: str | None = None) -> None:
    """`fab run --detach`'s body (tasks/managed.py hands over here)."""
    detach.submit(cfg, name, plan, instance_profile=instance_profile, out=_say)


def submit_nodes(cfg: AwsConfig, name: str, plan: Plan, nodes: int, rdzv_port: int) -> None:
    """`fab run --detach --nodes N`'s body."""
    detach_nodes.submit(cfg, name, plan, nodes, rdzv_port=rdzv_port, out=_say)


@task(iterable=["set_"])
@edge
def watch(c, name=None, poll=15.0, lines=10, config=None, set_=None):
    """Follow a detached run: state, current instance, attempts, log tail; the summary at the end."""
    cfg = aws_config(config, set_)
    d = detach_nodes.find(cfg, machine_name(name, cfg))
    try:
        detach.watch(d, out=_say, poll_s=float(poll), lines=int(lines))
    except KeyboardInterrupt:
        # Only the watching stops: the run goes on in its group.
        _say(f"stopped watching; the run goes on. `fab watch --name {d.name}` picks it up again")


@task(iterable=["set_"])
@edge(checks={"timeout": number(Range(1, 86400, why="seconds to wait for the trainer to stop"), 600)})
def stop(c, name=None, timeout=600.0, config=None, set_=None):
    """Stop a detached run gracefully: the trainer checkpoints to S3 and exits, then desired 0."""
    cfg = aws_config(config, set_)
    d = detach_nodes.find(cfg, machine_name(name, cfg))
    stop_run(d, float(timeout))


def stop_run(d: detach.Detached, timeout_s: float, poll_s: float = 2.0) -> record.DetachedRun:
    where = d.look()
    if where.state is None:
        raise ToolkitError(f"no detached run named {d.name!r}; `fab status` lists what runs")
    state = where.state
    if not state.ended:
        # A boot that starts now ends at once. Written by compare-and-swap: a detached cluster's
        # boots write the record too, and neither write may undo the other.
        state = detached_members.update(d.s3, d.root(), lambda s: setattr(s, "stop_requested", True))
    if where.current is not None and not state.ended:
        m = d.machine(where.current)
        if m is None:
            raise ToolkitError(
                f"{where.current.instance_id} has no address yet; retry `fab stop` in a minute"
            )
        m.run(runs.graceful_stop_command(m.record.remote_dir, state.run), check=False, retry=False)
        _say(f"asked the trainer on {where.current.instance_id} to checkpoint and stop")
        end = time.monotonic() + timeout_s
        while not (state := record.load(d.s3, d.root())).ended:
            if time.monotonic() > end:
                _say(f"the run has not stopped after {timeout_s:g} s; stopping the group anyway")
                break
            time.sleep(poll_s)
    d.set_desired(0)
    _say(f"{d.name}: {state.status}; desired capacity 0 (its instances are terminated by the group)")
    return state


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


def remove_group(cfg: AwsConfig, region: str, name: str) -> bool:
    """Delete a detached run's group (forcing its instances) and its template: True if there was
    one. Called by `fab terminate` before it terminates instances (else the group would replace them)."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    if asg.describe_group(autoscaling, name) is None and detach_nodes.remove(cfg, region, name, out=_say):
        detach_nodes.remove_shared_when_unused(cfg, region, name, out=_say)
        return True
    gone = asg.delete_group(autoscaling, name)
    if gone:
        _say(f"deleted Auto Scaling group {asg.group_name(name)} (its instances are terminated with it)")
    if asg.delete_template(ec2, name):
        _say(f"deleted launch template {asg.template_name(name)}")
    return gone


def leftovers(cfg: AwsConfig, region: str) -> None:
    """`fab cleanup`: groups of runs that ended with nothing left in them, and templates whose
    group is gone."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    groups = {g.name: g for g in asg.spotrun_groups(autoscaling, instances.NAME_TAG)}
    for g in groups.values():
        if g.desired == 0 and not g.instance_ids:
            remove_group(cfg, region, g.tags.get(instances.NAME_TAG, g.name.removeprefix("spotrun-")))
    detach_nodes.leftover_shared(cfg, region, out=_say)
    templates = ec2.describe_launch_templates(Filters=[{"Name": "tag-key", "Values": [instances.NAME_TAG]}])
    for t in templates["LaunchTemplates"]:
        name = t["LaunchTemplateName"].removeprefix("spotrun-")
        if asg.group_name(name) not in groups and asg.delete_template(ec2, name):
            _say(f"deleted launch template {t['LaunchTemplateName']} (its group is gone)")


def status_lines(cfg: AwsConfig, region: str) -> list[str]:
    """`fab status`: one line per detached run (group, current instance, attempt n of max, state,
    cost so far)."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    out = []
    groups = asg.spotrun_groups(autoscaling, instances.NAME_TAG)
    out += detach_nodes.status_lines(cfg, groups)
    for g in groups:
        if detach_nodes.RUN_TAG in g.tags:
            continue  # a member of a detached cluster: its run's line is above
        name = g.tags.get(instances.NAME_TAG, g.name)
        d = detach.Detached(cfg, name, root=g.tags.get(asg.ROOT_TAG))
        state = record.load(d.s3, d.root()) if d.root() else None
        current = ",".join(g.instance_ids) or "-"
        failed = f", boot failed: {g.tags[asg.FAILURE_TAG]}" if asg.FAILURE_TAG in g.tags else ""
        if state is None:
            out.append(
                f"{name}: group {g.name}, instance {current}, desired {g.desired}, no run record{failed}"
            )
            continue
        h = d.history(state)
        cost = f"${h.total_cost_usd:.4f}" if h.total_cost_usd is not None else "?"
        out.append(
            f"{name}: group {g.name}, instance {current}, attempt {len(state.attempts)} of "
            f"{state.max_attempts}, {state.status}, cost so far {cost}{failed}"
        )
    return out
