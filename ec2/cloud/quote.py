"""`fab prices`: what each configured type costs in each zone, before anything is launched.

One row per (type, zone) where the type is offered: its GPUs and vCPUs (describe_instance_types),
the current spot price (describe_spot_price_history), the on-demand price (the Pricing API, else
the table, marked), the saving, the spot placement score and the cost of H hours.

Placement scores (get_spot_placement_scores, 1-10) are asked once for all configured types
together, per zone: AWS scores one or two types alone as "always low", so a per-type score would
mislead. Where the account cannot get them the column says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.aws import AWS_FAILURES, aws_errors, error_code
from ec2.cloud import pricing, typeinfo
from ec2.cloud.capacity import offered_zones
from ec2.cloud.ondemand import OnDemand


@dataclass(frozen=True)
class PriceRow:
    instance_type: str
    zone: str
    info: typeinfo.TypeInfo | None
    spot: float | None
    on_demand: OnDemand
    score: int | None

    @property
    def savings(self) -> float | None:
        if self.spot is None or not self.on_demand.usd_per_hour:
            return None
        return 1 - self.spot / self.on_demand.usd_per_hour


def placement_scores(ec2, instance_types: list[str], region: str) -> tuple[dict[str, int], str]:
    """Zone name → score for the configured types together (capacity 1, single zone), and a
    note when AWS would not say."""
    try:
        zone_names = {
            z["ZoneId"]: z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]
        }
        scores: dict[str, int] = {}
        pages = ec2.get_paginator("get_spot_placement_scores").paginate(
            InstanceTypes=sorted(set(instance_types)),
            TargetCapacity=1,
            TargetCapacityUnitType="units",
            SingleAvailabilityZone=True,
            RegionNames=[region],
        )
        for page in pages:
            for item in page["SpotPlacementScores"]:
                name = zone_names.get(item.get("AvailabilityZoneId", ""))
                if name and item.get("Region", region) == region:
                    scores[name] = int(item["Score"])
        return scores, ""
    except AWS_FAILURES as e:
        code = error_code(e) if hasattr(e, "response") else type(e).__name__
        return {}, f"placement scores unavailable ({code})"


def rows(ec2, instance_types: list[str], zones: list[str], region: str, profile: str | None = None):
    """(rows sorted by spot price, notes)."""
    notes = []
    infos = typeinfo.describe(ec2, instance_types)
    for t in instance_types:
        if t not in infos:
            notes.append(f"{t} is not an EC2 instance type; skipped")
    known = [t for t in instance_types if t in infos]
    offered = offered_zones(ec2, known, zones) if known else {}
    for t in known:
        if not offered.get(t):
            notes.append(f"{t} is not offered in {region}{' ' + ','.join(zones) if zones else ''}")
    with aws_errors("reading spot prices"):
        spot = pricing.current_prices(pricing.spot_history(ec2, known, zones=zones or None)) if known else {}
    on_demand = {t: pricing.on_demand(t, region, profile) for t in known}
    scores, note = placement_scores(ec2, known, region) if known else ({}, "")
    if note:
        notes.append(note)
    if any(q.estimate and q.usd_per_hour is not None for q in on_demand.values()):
        notes.append("* on-demand from the built-in us-east-1 table (Pricing API unavailable): an estimate")
    out = [
        PriceRow(t, z, infos[t], spot.get((t, z)), on_demand[t], scores.get(z))
        for t in known
        for z in offered.get(t, [])
    ]
    rank = {t: i for i, t in enumerate(instance_types)}
    out.sort(key=lambda r: (r.spot is None, r.spot or 0.0, rank[r.instance_type], r.zone))
    return out, notes


def _usd(x: float | None, estimate: bool = False) -> str:
    return "-" if x is None else f"${x:.4f}" + ("*" if estimate else "")


def table(price_rows: list[PriceRow], hours: float) -> str:
    head = [
        "TYPE",
        "ZONE",
        "GPUS",
        "VCPUS",
        "SPOT $/H",
        "ON-DEMAND $/H",
        "SAVING",
        "SCORE",
        f"{hours:g} H SPOT",
    ]
    body = []
    for r in price_rows:
        est = r.on_demand.estimate and r.on_demand.usd_per_hour is not None
        body.append(
            [
                r.instance_type,
                r.zone,
                r.info.gpus() if r.info else "-",
                str(r.info.vcpus) if r.info else "-",
                _usd(r.spot),
                _usd(r.on_demand.usd_per_hour, est),
                "-" if r.savings is None else f"{r.savings:.0%}",
                "-" if r.score is None else f"{r.score}/10",
                _usd(None if r.spot is None else r.spot * hours),
            ]
        )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]
    )
