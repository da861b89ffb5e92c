"""Attended `fab run --nodes N` re-entry: when outputs/<name>/run.json records a cluster run still
going (the laptop process was killed, or left the members running on Ctrl-C), `fab run --nodes N
--name <name>` picks the open attempt up and goes on watching it on the same members: no refusal
("an instance named X-0 already exists") and no new machine.

The members must be that run's: N is the run's node count, and the live instances tagged
spotrun:cluster=<name> are exactly the members run.json records (a foreign one is refused, not
adopted). A member AWS took back while the laptop was away is not refused: the watch sees it gone,
waits for the other nodes' runs to stop, and the replace-node strategy (ec2/journey/recovery.py)
replaces it in its zone and placement group, as if the laptop had watched it go. The single-instance
counterpart is ec2/journey/reentry.py.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import aws
from common.attempt import Outcome
from ec2 import registry
from ec2.cloud import cluster, keys
from ec2.config import AwsConfig
from ec2.errors import ConfigError
from ec2.journey import history
from ec2.journey.reentry import ALIVE, OPEN_STATUSES, machine_for
from ec2.journey.stages import Plan
from ec2.registry import MachineRecord
from ec2.remote.nodes import member_name
from ec2.remote.ssh import Machine


@dataclass
class PickedUpCluster:
    history: history.RunHistory
    attempt: history.Attempt
    machines: list[Machine]  # node order; a lost node's machine is its last record (gone)
    ec2: object
    lost: list[int]  # nodes AWS took back while the laptop was away


def open_cluster_attempt(h: history.RunHistory) -> history.Attempt | None:
    """The last attempt of a cluster run that was never closed, while it has members."""
    if h.nodes < 2 or h.status not in OPEN_STATUSES or not h.attempts:
        return None
    last = h.attempts[-1]
    if not last.outcome.open or last.ended_at or not last.instance_ids:
        return None
    return last


def open_history(outputs: Path, name: str) -> history.RunHistory | None:
    """run.json of `name` when its journey (one instance or a cluster) was left open: its last
    attempt never ended (a run that ended by itself or was let go has it closed)."""
    path = history.history_path(outputs)
    if not path.is_file():
        return None
    h = history.load(path)
    if h.name != name or h.status not in OPEN_STATUSES or not h.attempts:
        return None
    last = h.attempts[-1]
    return h if last.outcome.open and not last.ended_at else None


def _again(name: str, nodes: int) -> str:
    return f"`fab run --nodes {nodes} --name {name}`" if nodes > 1 else f"`fab run --name {name}`"


def refuse_other_shape(outputs: Path, name: str, nodes: int) -> None:
    """A run left open on another number of machines than this command asks for is refused: a new
    launch would write over its run.json while its instances bill on."""
    h = open_history(outputs, name)
    if h is None or h.nodes == nodes:
        return
    where = f"{h.nodes} nodes" if h.nodes > 1 else "one instance"
    raise ConfigError(
        f"run {name} is still open on {where} ({history.history_path(outputs)}): {_again(name, h.nodes)} "
        f"picks it up, `fab terminate --name {name}` ends it; not starting it again on "
        f"{nodes if nodes > 1 else 'one'} {'nodes' if nodes > 1 else 'instance'}"
    )


def refuse_other_command(h: history.RunHistory, plan: Plan) -> None:
    """The run going on was started with this command (run name, train config, args), or refused,
    naming the words that differ: another command would be watched as if it were this one."""
    if (h.run, h.command) == (plan.run, plan.command):
        return
    was, now = shlex.split(h.command), shlex.split(plan.command)
    before = [w for w in was if w not in now] + ([f"run {h.run!r}"] if h.run != plan.run else [])
    after = [w for w in now if w not in was] + ([f"run {plan.run!r}"] if h.run != plan.run else [])
    raise ConfigError(
        f"run {h.name} still going on its cluster was started with another command (it has "
        f"{' '.join(before) or 'other words'} where this one has {' '.join(after) or 'other words'}): "
        f"run the same command again to pick it up, or `fab terminate --name {h.name}` first"
    )


def _gone_machine(cfg: AwsConfig, name: str, member: history.Member, region: str) -> Machine:
    """A member AWS no longer runs: its last record (the watch only asks AWS about it)."""
    record = registry.load_all().get(member_name(name, member.node))
    if record is None or record.instance_id != member.instance_id:
        record = MachineRecord(
            name=member_name(name, member.node),
            host="",
            key_path=str(keys.private_key_path(cfg.key_name, cfg.import_public_key)),
            instance_id=member.instance_id,
            region=region,
            instance_type=member.instance_type,
            zone=member.zone,
            market=member.market,
        )
    return Machine(record)


def pick_up(
    cfg: AwsConfig, name: str, nodes: int, plan: Plan, outputs: Path, out: Callable[[str], None] = print
) -> PickedUpCluster | None:
    """The open attempt of cluster run `name` to watch again, or None (nothing open: a new run).
    Refuses (ConfigError) a run on another N, started with another command, whose members are not
    the ones recorded, or with a foreign instance in the cluster's name."""
    refuse_other_shape(outputs, name, nodes)
    h = open_history(outputs, name)
    attempt = None if h is None else open_cluster_attempt(h)
    if attempt is None:
        return None
    refuse_other_command(h, plan)
    members = [m for m in h.members if m.outcome.open]
    path = history.history_path(outputs)
    if sorted(m.node for m in members) != list(range(nodes)):
        raise ConfigError(
            f"run {name}'s record ({path}) has no open member for every node 0..{nodes - 1}; "
            f"end it with `fab terminate --name {name}` and start it again"
        )
    region = aws.region_of(cfg.region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    found = {i.instance_id: i for i in cluster.members(ec2, name) if i.state in ALIVE}
    recorded = {m.instance_id for m in members}
    foreign = [i for i in found.values() if i.instance_id not in recorded]
    if foreign:
        listing = ", ".join(f"{i.name} ({i.instance_id})" for i in foreign)
        raise ConfigError(
            f"{listing} {'is' if len(foreign) == 1 else 'are'} running in cluster {name} but not a member "
            f"of the run recorded in {path}; `fab terminate --name {name}` ends the cluster, or pick "
            "another --name"
        )
    machines: list[Machine] = []
    lost: list[int] = []
    for m in sorted(members, key=lambda m: m.node):
        info = found.get(m.instance_id)
        if info is None:
            lost.append(m.node)
            machines.append(_gone_machine(cfg, name, m, region))
        else:
            machines.append(machine_for(cfg, info, region))
        m.outcome = Outcome.RUNNING  # left-running → watched again: the fleet's live members
    listing = ", ".join(f"{x.name} {x.record.instance_id}" for k, x in enumerate(machines) if k not in lost)
    line = f"picking up run {name}: attempt {attempt.number} on {nodes} nodes ({listing or 'none left'})"
    if lost:
        gone = ", ".join(f"{member_name(name, k)} {machines[k].record.instance_id}" for k in lost)
        line += (
            f"; {gone} {'is' if len(lost) == 1 else 'are'} gone (taken back while the laptop was away): "
            "replaced once the other nodes' runs have stopped"
        )
    out(line + "; watching it again")
    attempt.outcome = Outcome.RUNNING
    return PickedUpCluster(h, attempt, machines, ec2, lost)
