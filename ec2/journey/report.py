"""What `fab run` tells the user at the end: per attempt the instance, outcome, time and cost, then
the totals and the steps lost to interruptions. Pure functions over the run history (ec2.history)."""

from __future__ import annotations

from datetime import datetime

from ec2 import pricing
from ec2.history import Attempt, RunHistory


def attempt_cost(a: Attempt, spot_points: list[pricing.PricePoint]) -> float | None:
    """USD for the attempt's uptime: the spot price history integrated over it (spot), else the
    on-demand list price. None when the uptime or any price is unknown."""
    if not (a.launched_at and a.ended_at and a.instance_type):
        return None
    start, end = datetime.fromisoformat(a.launched_at), datetime.fromisoformat(a.ended_at)
    if a.market == "spot" and spot_points:
        return pricing.cost_over(spot_points, start, end)
    price = pricing.on_demand_price(a.instance_type)
    return None if price is None else price * max((end - start).total_seconds(), 0) / 3600


def fetch_cost(ec2, a: Attempt) -> float | None:
    """attempt_cost with the spot price history of the attempt's type and zone read from AWS."""
    points: list[pricing.PricePoint] = []
    if a.market == "spot" and a.launched_at and a.ended_at and a.instance_type:
        start, end = datetime.fromisoformat(a.launched_at), datetime.fromisoformat(a.ended_at)
        points = pricing.spot_history(ec2, [a.instance_type], start, end, zones=[a.zone]).get(
            (a.instance_type, a.zone), [])
    return attempt_cost(a, points)


def money(x: float | None) -> str:
    return "?" if x is None else f"${x:.4f}"


def duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def summary(h: RunHistory) -> str:
    """The end-of-run report: one line per attempt, then the totals."""
    lines = [f"run {h.name}: {h.status} after {len(h.attempts)} attempt(s)"]
    for a in h.attempts:
        resumed = f", resumed at step {a.resumed_step}" if a.resumed_step is not None else ""
        lines.append(
            f"  attempt {a.number}: {a.instance_type or '?'} in {a.zone or '?'} ({a.market or '?'}) "
            f"{a.instance_id or ''} — {a.outcome}, {duration(a.seconds)}, {money(a.cost_usd)}{resumed}"
        )
    lost = h.steps_lost()
    each = f" ({', '.join(map(str, lost))})" if lost else ""
    lines.append(f"  total cost {money(h.total_cost_usd)}; interruptions {len(lost)}; "
                 f"steps lost to interruptions {sum(lost)}{each}")
    return "\n".join(lines)
