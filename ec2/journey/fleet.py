"""The instances of a multi-node `fab run` over its whole life: the cluster launched, a lost node
replaced in its zone and placement group, or, with no capacity there, the whole cluster launched
again elsewhere (or on-demand, when the run's budget moved it there); each member recorded in the
run history (history.Member) from launch to termination, with its cost, since a survivor serves
several attempts. The attempts themselves are ec2/journey/cluster_loop.py."""

from __future__ import annotations

from collections.abc import Callable

from common import aws
from common.attempt import Outcome
from ec2.cloud import cluster, instances
from ec2.config import AwsConfig
from ec2.errors import CapacityError
from ec2.journey import history, report, stages
from ec2.registry import MachineRecord
from ec2.remote import nodes
from ec2.remote.ssh import Machine


class Fleet:
    def __init__(
        self,
        cfg: AwsConfig,
        name: str,
        count: int,
        h: history.RunHistory,
        *,
        s3: tuple = (),
        out: Callable[[str], None] = print,
    ):
        self.cfg, self.name, self.count, self.h, self.s3, self.out = cfg, name, count, h, s3, out
        self.machines: list[Machine] = []  # node order
        self.ec2 = None
        self.exclude: set[tuple[str, str]] = set()  # (type, zone) pairs a cluster lost capacity in

    def _joined(self, node: int, record: MachineRecord) -> None:
        self.h.members.append(
            history.Member(
                node=node,
                instance_id=record.instance_id,
                instance_type=record.instance_type,
                zone=record.zone,
                market=record.market,
                launched_at=record.launched_at or history.now_iso(),
            )
        )

    def live(self) -> list[history.Member]:
        return [m for m in self.h.members if m.outcome == Outcome.RUNNING]

    def member(self, node: int) -> history.Member:
        return [m for m in self.live() if m.node == node][-1]

    def launch_all(self) -> None:
        """The whole cluster with `cfg` (its market: the run's budget may have moved it to
        on-demand, ec2.journey.recovery.ReplaceNode), `exclude`d types and zones left out (all tried
        again once none is left)."""
        try:
            records = cluster.launch_cluster(
                self.cfg, self.name, self.count, exclude=frozenset(self.exclude), s3=self.s3, out=self.out
            )
        except CapacityError as e:
            if e.code != "NoChoices" or not self.exclude:
                raise
            self.out("every configured type and zone has been interrupted once; trying them all again")
            self.exclude.clear()
            records = cluster.launch_cluster(self.cfg, self.name, self.count, s3=self.s3, out=self.out)
        self.ec2 = aws.client("ec2", records[0].region or self.cfg.region, self.cfg.profile)
        self.machines = [Machine(r) for r in records]
        for node, r in enumerate(records):
            self._joined(node, r)
        self.h.event(
            "launched",
            nodes=self.count,
            instance_ids=[r.instance_id for r in records],
            instance_type=records[0].instance_type,
            zone=records[0].zone,
            market=records[0].market,
        )

    def terminate(self, members: list[history.Member], outcome: Outcome) -> None:
        """Terminate these members (waited for: AWS keeps the groups while they exist) and record it."""
        if not members:
            return
        states = {m.instance_id: stages.instance_state(self.ec2, m.instance_id) for m in members}
        alive = [iid for iid, state in states.items() if state not in ("gone", "terminated")]
        instances.terminate_instances(self.ec2, alive, wait=True)
        for m in members:
            instances.forget_local(nodes.member_name(self.name, m.node))
            m.ended_at, m.outcome = history.now_iso(), outcome
            m.cost_usd = report.fetch_cost(self.ec2, m)
        self.out(f"terminated {', '.join(m.instance_id for m in members)}")
        self.h.event("terminated", instance_ids=[m.instance_id for m in members], outcome=outcome)

    def take_down(self, outcome: Outcome = Outcome.TERMINATED) -> None:
        """Every live member, then the placement group and the members' group."""
        self.terminate(self.live(), outcome)
        cluster.remove_shared(self.ec2, self.cfg, self.name)
        self.out(f"removed cluster {self.name}'s placement group and members' security group")

    def restore_on_demand(self, lost: list[int]) -> list[int]:
        """N nodes again, every one on-demand (`cfg` says on-demand: the run's budget moved it
        there): the lost nodes and the spot survivors terminated, the whole cluster launched anew.
        The nodes that are new (all)."""
        self.terminate([self.member(k) for k in lost], Outcome.LOST)
        self.out(f"terminating the spot survivors and launching all {self.count} nodes on-demand")
        self.h.event("relaunch-all", why="on-demand")
        self.take_down()
        self.launch_all()
        return list(range(self.count))

    def restore(self, lost: list[int]) -> list[int]:
        """N nodes again after losing `lost`: those terminated and replaced in the same zone and
        placement group, or, with no capacity there (a cluster placement group cannot span
        zones), the survivors terminated too and the whole cluster launched elsewhere, that type
        and zone excluded. The nodes that are new (to set up)."""
        self.terminate([self.member(k) for k in lost], Outcome.LOST)
        survivors = [m for k, m in enumerate(self.machines) if k not in lost]
        if not lost:
            return []  # every run stopped resumably and every machine is still there: restart
        if not survivors:
            self.out("every node was lost: launching the cluster again")
            cluster.remove_shared(self.ec2, self.cfg, self.name)
            self.launch_all()
            return list(range(self.count))
        try:
            for k in lost:
                record = cluster.launch_replacement(self.cfg, self.name, k, survivors[0].record, out=self.out)
                self.machines[k] = Machine(record)
                self._joined(k, record)
                self.h.event("replaced", node=k, instance_id=record.instance_id, zone=record.zone)
            return lost
        except CapacityError as e:
            r = survivors[0].record
            self.out(
                f"no capacity for a replacement in {r.zone} ({e}); terminating the survivors and "
                f"launching all {self.count} nodes elsewhere"
            )
            self.h.event("relaunch-all", why=str(e), excluded=[r.instance_type, r.zone])
            self.exclude.add((r.instance_type, r.zone))
            self.take_down()
            self.launch_all()
            return list(range(self.count))
