"""What `fab run` tells the user at the end: per attempt the instance, outcome, time and cost, then
the totals and the steps lost to interruptions. Pure functions over the run history (ec2.journey.history)."""

from __future__ import annotations

from datetime import datetime

from common.attempt import Attempt
from ec2.cloud import pricing
from ec2.journey import ledger
from ec2.journey.history import Member, RunHistory, seconds_between


def attempt_cost(a: Attempt, spot_points: list[pricing.PricePoint]) -> float | None:
    """USD for the attempt's uptime: the spot price history integrated over it (spot), else the
    on-demand list price. None when the uptime or any price is unknown."""
    if not (a.launched_at and a.ended_at and a.instance_type):
        return None
    start, end = datetime.fromisoformat(a.launched_at), datetime.fromisoformat(a.ended_at)
    if a.market == "spot" and spot_points:
        return pricing.cost_over(spot_points, start, end)
    price = pricing.on_demand_price(a.instance_type, pricing.region_of_zone(a.zone))
    return None if price is None else price * max((end - start).total_seconds(), 0) / 3600


def fetch_cost(ec2, a: Attempt) -> float | None:
    """attempt_cost with the spot price history of the attempt's type and zone read from AWS."""
    points: list[pricing.PricePoint] = []
    if a.market == "spot" and a.launched_at and a.ended_at and a.instance_type:
        start, end = datetime.fromisoformat(a.launched_at), datetime.fromisoformat(a.ended_at)
        points = pricing.spot_history(ec2, [a.instance_type], start, end, zones=[a.zone]).get(
            (a.instance_type, a.zone), []
        )
    return attempt_cost(a, points)


def money(x: float | None) -> str:
    return "?" if x is None else f"${x:.4f}"


def duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _attempt_row(a: Attempt) -> list[str]:
    what = str(a.outcome)
    if a.outcome.interrupted and a.last_step is not None:
        what += f" at step {a.last_step}"
    if a.resumed_step is not None:
        what = f"resumed at step {a.resumed_step}, {what}"
    if a.instance_id is None:  # never got an instance: no place, time or cost to show
        return [f"attempt {a.number}", "-", "-", "-", "-", what, "-", "-"]
    on = "" if a.gpus is None else (" (CPU)" if a.gpus == 0 else f" ({_count(a.gpus, 'GPU')})")
    return [
        f"attempt {a.number}",
        (a.instance_type or "?") + on,
        a.zone or "?",
        a.market or "?",
        a.instance_id,
        what,
        duration(a.seconds),
        money(a.cost_usd),
    ]


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells in columns; the last two (time and cost) line up on the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = []
    for row in rows:
        right = {len(row) - 2, len(row) - 1}
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells))
    return lines


def summary(h: RunHistory) -> str:
    """The end-of-run report: a headline, an aligned row per attempt (instance, outcome, time,
    cost), then the totals and the steps lost to interruptions. A multi-node run: cluster_summary."""
    if h.members or h.nodes > 1:  # a cluster's, also when its launch failed (no member yet)
        return cluster_summary(h)
    instances = len({a.instance_id for a in h.attempts if a.instance_id})
    lines = [
        f"run {h.name}: {h.status} after {_count(len(h.attempts), 'attempt')} "
        f"on {_count(instances, 'instance')}"
    ]
    lines += _aligned([_attempt_row(a) for a in h.attempts])
    used = [a.seconds for a in h.attempts if a.seconds is not None]
    interruptions = sum(1 for a in h.attempts if a.outcome.interrupted)
    lost = h.steps_lost()
    each = f" ({', '.join(map(str, lost))})" if len(lost) > 1 else ""
    wall = seconds_between(h.started_at, h.finished_at)
    lines.append(
        f"  total {money(h.total_cost_usd)} for {duration(sum(used) if used else None)} of instance time"
        + (f" ({duration(wall)} wall clock)" if wall is not None else "")
        + f"; {_count(interruptions, 'interruption')}, steps lost to interruptions {sum(lost)}{each}"
    )
    read = [a for a in h.attempts if a.s3_gets is not None]
    if read:
        gets, gb = sum(a.s3_gets for a in read), sum(a.s3_gb or 0 for a in read)
        usd = sum(a.s3_request_usd or 0 for a in read)
        lines.append(f"  data read from S3: {gets:,} GETs, {gb:.2f} GB, ${usd:.6f} in requests")
    lines += ledger.lines(h)  # the dollars on steps kept and lost to interruptions
    return "\n".join(lines)


def _per_node(h: RunHistory) -> str:
    gpus = next((a.gpus for a in reversed(h.attempts) if a.gpus is not None), None)
    return "?" if gpus is None else ("CPU" if gpus == 0 else _count(gpus, "GPU"))


def _member_row(m: Member) -> list[str]:
    return [
        f"node {m.node}",
        m.instance_type or "?",
        m.zone or "?",
        m.market or "?",
        m.instance_id,
        str(m.outcome),
        duration(m.seconds),
        money(m.cost_usd),
    ]


def _cluster_attempt_line(a: Attempt) -> str:
    what = str(a.outcome)
    if a.outcome.interrupted and a.last_step is not None:
        what += f" at step {a.last_step}"
    if a.resumed_step is not None:
        what = f"resumed at step {a.resumed_step}, {what}"
    if a.nodes_lost:
        what += f"; node {', '.join(map(str, a.nodes_lost))} lost"
    if a.seconds_notice_to_resumed is not None:
        what += f"; {a.seconds_notice_to_resumed:g} s from the notice to resumed"
    return f"  attempt {a.number}: {what}"


def cluster_summary(h: RunHistory) -> str:
    """A multi-node run's report: nodes x GPUs per node, a row per instance (node, place, outcome,
    time, cost: a survivor's instance serves several attempts), a line per attempt, then the
    totals: cost over every member, nodes lost, steps lost, notice to resumed; then the ledger
    (the members' cost cut into the attempts' windows, ec2.journey.ledger)."""
    lines = [
        f"run {h.name}: {h.status} after {_count(len(h.attempts), 'attempt')} on {h.nodes} nodes x "
        f"{_per_node(h)} per node ({_count(len(h.members), 'instance')})"
    ]
    lines += _aligned([_member_row(m) for m in h.members])
    lines += [_cluster_attempt_line(a) for a in h.attempts]
    used = [m.seconds for m in h.members if m.seconds is not None]
    wall = seconds_between(h.started_at, h.finished_at)
    lost = h.steps_lost()
    each = f" ({', '.join(map(str, lost))})" if len(lost) > 1 else ""
    resumed = [a.seconds_notice_to_resumed for a in h.attempts if a.seconds_notice_to_resumed is not None]
    lines.append(
        f"  total {money(h.total_cost_usd)} for {duration(sum(used) if used else None)} of instance time"
        + (f" ({duration(wall)} wall clock)" if wall is not None else "")
        + f"; nodes lost {sum(len(a.nodes_lost) for a in h.attempts)}"
        + f", steps lost to interruptions {sum(lost)}{each}"
        + (f", notice to resumed {', '.join(f'{s:g}' for s in resumed)} s" if resumed else "")
    )
    lines += ledger.lines(h)  # the members' dollars per attempt: on steps kept, lost to interruptions
    return "\n".join(lines)
