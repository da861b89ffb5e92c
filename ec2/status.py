"""`fab status`: every spotrun instance of a region (found by tag), what it costs, and how the local
registry compares: instances it does not know (orphans), entries whose instance is gone.

Rows are plain data built by pure functions; only `collect` talks to AWS and SSH.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ec2 import registry
from ec2.cloud import instances, pricing
from ec2.cloud.cluster import CLUSTER_TAG, NODE_TAG
from ec2.cloud.instances import InstanceInfo
from ec2.journey import standing
from ec2.registry import MachineRecord
from ec2.remote import runs
from ec2.remote.ssh import Machine

RUN_STATE_TIMEOUT_S = 8
NOT_REGISTERED = "not in registry"


@dataclass(frozen=True)
class Row:
    info: InstanceInfo
    region: str
    price_now: float | None  # USD/h
    cost_so_far: float | None  # USD
    estimate: bool  # on-demand table price (us-east-1 list price), not an API figure
    run: str = ""  # the `train` run's state, for reachable registered machines
    note: str = ""


@dataclass(frozen=True)
class Report:
    rows: list[Row]
    missing: list[MachineRecord]  # registry entries of this region whose instance is gone
    updated: list[str]  # registry entries whose address was refreshed from AWS
    # The attended runs (`fab run`) at work on these machines: a line each, then its ledger so far.
    ledgers: list[str] = dataclasses.field(default_factory=list)


def uptime(info: InstanceInfo, now: datetime) -> timedelta:
    if info.launched_at is None or info.state not in ("pending", "running"):
        return timedelta(0)
    return max(now - info.launched_at, timedelta(0))


def cost_row(
    info: InstanceInfo, history: dict, now: datetime, region: str | None = None
) -> tuple[float | None, float | None, bool]:
    """(price now, cost so far, estimate?) from the spot history, or the on-demand price (the
    Pricing API for ``region``; the table, an estimate, without one or offline)."""
    if info.market == "spot":
        points = history.get((info.instance_type, info.zone), [])
        if points:
            start = info.launched_at or now
            end = start + uptime(info, now)
            return points[-1][1], pricing.cost_over(points, start, end), False
        return None, None, False
    quote = pricing.on_demand(info.instance_type, region)
    price = quote.usd_per_hour
    if price is None:
        return None, None, True
    return price, price * uptime(info, now).total_seconds() / 3600, quote.estimate


def _grouped(found: list[InstanceInfo]) -> list[InstanceInfo]:
    """A multi-node run's members together, node 0 first; everything else keeps its order."""
    first = {}
    for n, info in enumerate(found):
        first.setdefault(info.tag(CLUSTER_TAG) or info.instance_id, n)

    def key(item: tuple[int, InstanceInfo]):
        n, info = item
        group = info.tag(CLUSTER_TAG)
        return (first[group], int(info.tag(NODE_TAG) or 0)) if group else (n, 0)

    return [info for _, info in sorted(enumerate(found), key=key)]


def display_name(info: InstanceInfo) -> str:
    group, node = info.tag(CLUSTER_TAG), info.tag(NODE_TAG)
    return f"{info.name} [{group} node {node}]" if group and node is not None else info.name


def build_rows(
    found: list[InstanceInfo], region: str, history: dict, known: dict[str, MachineRecord], now: datetime
) -> list[Row]:
    rows = []
    for info in _grouped(found):
        price, cost, estimate = cost_row(info, history, now, region)
        record = known.get(info.name)
        note = "" if record is not None and record.instance_id == info.instance_id else NOT_REGISTERED
        rows.append(Row(info, region, price, cost, estimate, note=note))
    return rows


def missing_entries(
    known: dict[str, MachineRecord], region: str, found: list[InstanceInfo]
) -> list[MachineRecord]:
    """Launched (not adopted) entries of this region whose instance is not among the live ones."""
    ids = {i.instance_id for i in found if i.state != "shutting-down"}
    return [r for r in known.values() if not r.adopted and r.region == region and r.instance_id not in ids]


def reconcile(known: dict[str, MachineRecord], found: list[InstanceInfo]) -> list[str]:
    """Refresh registered addresses from AWS (a stopped and started instance gets a new IP)."""
    from ec2.remote import sshconfig

    updated = []
    for info in found:
        record = known.get(info.name)
        if record is None or record.instance_id != info.instance_id or info.state != "running":
            continue
        # Keep the address kind the record was launched with (a private IP or an instance id stays).
        if record.host in (info.private_ip, info.instance_id) or not info.public_ip:
            continue
        if record.host != info.public_ip:
            fresh = dataclasses.replace(record, host=info.public_ip)
            registry.put(fresh)
            sshconfig.write_entry(fresh)
            updated.append(info.name)
    return updated


def run_states(rows: list[Row], known: dict[str, MachineRecord]) -> list[Row]:
    """The `train` run's state of each running registered machine, asked concurrently (a short
    timeout each, so one unreachable machine does not hold up the table)."""
    todo = [i for i, r in enumerate(rows) if not r.note and r.info.state == "running"]
    if not todo:
        return rows

    def ask(i: int) -> str:
        machine = Machine(known[rows[i].info.name], attempts=1)
        return str(runs.run_state(machine, "train", timeout=RUN_STATE_TIMEOUT_S))

    # An unreachable machine costs its SSH timeout: say what the wait is for.
    print(f"checking the run on {len(todo)} machine(s) over SSH (--no-runs skips this)...", file=sys.stderr)
    out = list(rows)
    with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
        for i, state in zip(todo, pool.map(ask, todo), strict=True):
            out[i] = dataclasses.replace(out[i], run=state)
    return out


def collect(ec2, region: str, *, now: datetime | None = None, check_runs: bool = True) -> Report:
    now = now or datetime.now(UTC)
    found = instances.find_instances(ec2, states=instances.SHOWN_STATES)
    spot = [i for i in found if i.market == "spot" and i.launched_at is not None]
    history = {}
    if spot:
        start = min(i.launched_at for i in spot)
        history = pricing.spot_history(
            ec2, {i.instance_type for i in spot}, start=start, end=now, zones={i.zone for i in spot}
        )
    known = registry.load_all()
    updated = reconcile(known, found)
    known = registry.load_all() if updated else known
    rows = build_rows(found, region, history, known, now)
    if check_runs:
        rows = run_states(rows, known)
    return Report(rows, missing_entries(known, region, found), updated, run_ledgers(ec2, rows))


def run_ledgers(ec2, rows: list[Row]) -> list[str]:
    """Each registered running machine's attended run, from its local outputs/<name>/run.json (no
    SSH: also with --no-runs): where its dollars went so far (ec2.journey.standing). A cluster's
    members share their run's (outputs/<cluster>/run.json): shown once."""
    out, seen = [], set()
    for r in rows:
        name = r.info.tag(CLUSTER_TAG) or r.info.name
        if not r.note and r.info.state == "running" and name not in seen:
            if lines := standing.attended(ec2, name, r.info.instance_id):
                seen.add(name)
                out += lines
    return out


def _money(value: float | None, estimate: bool = False) -> str:
    if value is None:
        return "?"
    text = f"${value:.2f}" if value >= 0.01 or value == 0 else f"${value:.5f}"
    return text + ("*" if estimate else "")


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


HEADER = ("NAME", "ID", "TYPE", "ZONE", "MARKET", "STATE", "ADDRESS", "UPTIME", "$/H", "COST", "RUN", "")


def table(rows: list[Row], now: datetime) -> str:
    """The status table as text (a pure function)."""
    lines = [HEADER]
    for r in rows:
        i = r.info
        lines.append(
            (
                display_name(i),
                i.instance_id,
                i.instance_type,
                i.zone,
                i.market,
                i.state,
                i.public_ip or i.private_ip or "-",
                _duration(uptime(i, now)),
                _money(r.price_now, r.estimate),
                _money(r.cost_so_far, r.estimate),
                r.run or "-",
                f"<- {r.note}" if r.note else "",
            )
        )
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(HEADER))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
