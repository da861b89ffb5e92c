"""Detached runs (`fab run --detach`): the run is kept alive by an Auto Scaling group of one and
each instance's boot, with no laptop watching. These tasks follow (`watch`), stop (`stop`) and
remove (`terminate`, `cleanup` through tasks/lifecycle) such runs; the logic is in
ec2/journey/detach.py and ec2/journey/detached_groups.py."""

from __future__ import annotations

from invoke import task

from common.checks import Range
from ec2.config import AwsConfig
from ec2.journey import detach, detach_nodes
from ec2.journey.stages import Plan
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
    detach.stop(d, float(timeout), out=_say)
