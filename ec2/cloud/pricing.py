"""What an instance costs: the current spot price per type and zone, and the cost over an uptime.

Spot prices change over time, so the cost so far is the integral of the price history over the
uptime (each price holds until the next change). On-demand prices come from the AWS Pricing API
(ec2.cloud.ondemand, cached for a day); the small table of common GPU types below (us-east-1,
Linux) is only the offline fallback, and everything priced from it is marked as an estimate.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from common.aws import aws_errors
from ec2.cloud import ondemand
from ec2.cloud.ondemand import OnDemand

# us-east-1 Linux on-demand list prices, USD per hour (aws.amazon.com/ec2/pricing/on-demand/, 2025):
# the offline fallback only. Other regions differ by roughly 10-30%; shown marked as estimates.
ON_DEMAND_USD_PER_HOUR = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.4xlarge": 1.3232,
    "g6.12xlarge": 4.6016,
    "g6e.xlarge": 1.861,
    "g6e.2xlarge": 2.24208,
    "p3.2xlarge": 3.06,
    "p4d.24xlarge": 32.7726,
    "p5.48xlarge": 98.32,
}

PRODUCT = "Linux/UNIX"

PricePoint = tuple[datetime, float]


def on_demand(instance_type: str, region: str | None = None, profile: str | None = None) -> OnDemand:
    """The on-demand $/h in ``region`` from the Pricing API (cached); without a region, or when
    the API cannot answer, the table's us-east-1 figure, marked as an estimate."""
    if region is None:
        usd = ON_DEMAND_USD_PER_HOUR.get(instance_type)
        return OnDemand(usd, ondemand.TABLE if usd is not None else "")
    return ondemand.prices([instance_type], region, profile)[instance_type]


def on_demand_price(
    instance_type: str, region: str | None = None, profile: str | None = None
) -> float | None:
    return on_demand(instance_type, region, profile).usd_per_hour


def region_of_zone(zone: str | None) -> str | None:
    """``us-east-1a`` → ``us-east-1`` (also for Local Zones such as ``us-east-1-bos-1a``)."""
    if not zone:
        return None
    parts = zone.split("-")
    return "-".join(parts[:3])[:-1] if len(parts) == 3 else "-".join(parts[:3])


def spot_history(
    ec2,
    instance_types: Iterable[str],
    start: datetime | None = None,
    end: datetime | None = None,
    zones: Iterable[str] | None = None,
) -> dict[tuple[str, str], list[PricePoint]]:
    """Spot price points per (type, zone), oldest first, over [start, end] (AWS includes the price
    in effect at ``start``). Without ``start``: only the latest price of each pair."""
    types = sorted(set(instance_types))
    if not types:
        return {}
    kwargs = {"InstanceTypes": types, "ProductDescriptions": [PRODUCT]}
    if start is not None:
        kwargs["StartTime"] = start
        kwargs["EndTime"] = end or datetime.now(start.tzinfo)
    else:
        # StartTime == EndTime == now asks for the price in effect now: one point per pair.
        kwargs["StartTime"] = kwargs["EndTime"] = datetime.now().astimezone()
    wanted = set(zones) if zones else None
    out: dict[tuple[str, str], list[PricePoint]] = {}
    with aws_errors("reading spot price history"):
        for page in ec2.get_paginator("describe_spot_price_history").paginate(**kwargs):
            for item in page["SpotPriceHistory"]:
                zone = item["AvailabilityZone"]
                if wanted is not None and zone not in wanted:
                    continue
                out.setdefault((item["InstanceType"], zone), []).append(
                    (item["Timestamp"], float(item["SpotPrice"]))
                )
    for points in out.values():
        points.sort(key=lambda p: p[0])
    return out


def current_prices(history: dict[tuple[str, str], list[PricePoint]]) -> dict[tuple[str, str], float]:
    """The newest price of each (type, zone)."""
    return {key: points[-1][1] for key, points in history.items() if points}


def price_at(points: list[PricePoint], when: datetime) -> float | None:
    """The price in effect at ``when``: the last change at or before it (else the first known)."""
    if not points:
        return None
    current = points[0][1]
    for at, price in points:
        if at > when:
            break
        current = price
    return current


def cost_over(points: list[PricePoint], start: datetime, end: datetime) -> float | None:
    """USD for running from ``start`` to ``end`` under a piecewise-constant price history.

    Each price holds from its timestamp until the next one; before the first point the first price
    is assumed (AWS reports the price in effect at the window's start, so this only matters when
    the history is incomplete)."""
    if not points:
        return None
    if end <= start:
        return 0.0
    total = 0.0
    cursor = start
    price = price_at(points, start)
    for at, new_price in points:
        if at <= start:
            continue
        if at >= end:
            break
        total += price * (at - cursor).total_seconds() / 3600
        cursor, price = at, new_price
    total += price * (end - cursor).total_seconds() / 3600
    return total
