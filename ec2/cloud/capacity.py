"""The launch plan: which (instance type, zone) to try in which order, and what an AWS refusal
means for the rest of the plan.

Capacity refusals are local to one type in one zone, so the next choice may work. Quota and price
refusals apply to the whole account or request: trying more choices only repeats them, so the
launch stops at once and says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.aws import aws_errors
from ec2.cloud import quota

# The type has no capacity (or is not sold) in that zone right now: try the next choice.
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "UnfulfillableCapacity",
        "Unsupported",
        "SpotCapacityNotAvailable",
        "InsufficientFreeAddressesInSubnet",
    }
)

# Account- or request-wide: stop, with what to do next. "{quota}" is the Service Quotas entry of
# the refused type's family and market (ec2.cloud.quota), so a P5 spot refusal names "All P5 Spot
# Instance Requests", not another family's quota.
QUOTA_NEXT_STEP = {
    "VcpuLimitExceeded": (
        "your vCPU quota for this instance family is used up; request more in the Service Quotas "
        "console ({quota}), or terminate other instances"
    ),
    "MaxSpotInstanceCountExceeded": (
        "your spot instance quota is used up; request more in Service Quotas ({quota}), cancel open "
        "spot requests, or set market: on-demand"
    ),
    "SpotMaxPriceTooLow": (
        "the spot price is above max_price; raise max_price or leave it unset (AWS recommends "
        "unset: you then pay the current spot price, never more than on-demand)"
    ),
    "InstanceLimitExceeded": (
        "your instance quota for this type is used up; request more in Service Quotas ({quota}) or "
        "terminate other instances"
    ),
}


def quota_next_step(code: str, instance_type: str, market: str) -> str:
    """QUOTA_NEXT_STEP[code] naming the quota that limits ``instance_type`` in ``market``."""
    ref = quota.quota_for(instance_type, quota.SPOT if market == "spot" else quota.ON_DEMAND)
    where = f"EC2 → '{ref.name}', {ref.code}" if ref else f"EC2 → the quota of the {instance_type} family"
    return QUOTA_NEXT_STEP[code].format(quota=where)


@dataclass(frozen=True)
class Choice:
    instance_type: str
    zone: str
    market: str  # "spot" | "on-demand"
    price: float | None  # USD/h now (spot price, or the on-demand table), None if unknown

    def describe(self) -> str:
        price = f"${self.price:.4f}/h" if self.price is not None else "price unknown"
        return f"{self.instance_type} in {self.zone} ({self.market}, {price})"


def offered_zones(ec2, instance_types: list[str], zones: list[str]) -> dict[str, list[str]]:
    """For each type, the zones (of ``zones``, or all) where it is sold at all: trying the others
    can only return Unsupported."""
    filters = [{"Name": "instance-type", "Values": list(instance_types)}]
    if zones:
        filters.append({"Name": "location", "Values": list(zones)})
    out: dict[str, list[str]] = {t: [] for t in instance_types}
    with aws_errors("listing where the instance types are offered"):
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=filters
        )
        for page in pages:
            for offer in page["InstanceTypeOfferings"]:
                out.setdefault(offer["InstanceType"], []).append(offer["Location"])
    return {t: sorted(z) for t, z in out.items()}


def plan(
    instance_types: list[str],
    offered: dict[str, list[str]],
    spot_prices: dict[tuple[str, str], float],
    on_demand: dict[str, float],
    market: str,
    exclude: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    step_seconds: dict[str, float] | None = None,
) -> list[Choice]:
    """The ordered choices. Spot: cheapest current price first, ties broken by the configured type
    order, then zone name; pairs without a known price go last. On-demand: configured type order
    (its price is the same in every zone). With spot-then-on-demand, on-demand follows all spot.

    ``step_seconds`` (choose_by: run_cost): types with a billed time per step come first, ordered
    by price × that time (the run's cost per step kept); the others follow by price."""
    rank = {t: i for i, t in enumerate(instance_types)}
    pairs = [(t, z) for t in instance_types for z in offered.get(t, []) if (t, z) not in exclude]
    per_step = step_seconds or {}

    def cost_key(t: str, price: float | None):
        if price is None:
            return (True, True, 0.0)
        if step_seconds is None:
            return (False, False, price)
        return (False, t not in per_step, price * per_step.get(t, 1.0))

    def spot_key(pair):
        return (*cost_key(pair[0], spot_prices.get(pair)), rank[pair[0]], pair[1])

    def demand_key(pair):
        if step_seconds is None:
            return (rank[pair[0]], pair[1])
        return (*cost_key(pair[0], on_demand.get(pair[0])), rank[pair[0]], pair[1])

    spot = [Choice(t, z, "spot", spot_prices.get((t, z))) for t, z in sorted(pairs, key=spot_key)]
    demand = [Choice(t, z, "on-demand", on_demand.get(t)) for t, z in sorted(pairs, key=demand_key)]
    if market == "spot":
        return spot
    if market == "on-demand":
        return demand
    return spot + demand
