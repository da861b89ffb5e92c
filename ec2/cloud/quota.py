"""EC2 vCPU quotas: which Service Quotas code limits a type in a market, its value, and a request
for more.

EC2 limits running vCPUs per instance family group and market (Service Quotas, service code
"ec2"). A new account often has 0 vCPUs of "All G and VT Spot Instance Requests" (or of P5's own
"All P5 Spot Instance Requests"), so the first launch fails; `fab doctor` compares each quota
with the vCPUs of the largest configured type of its group and can file the increase
(`--request-quota N`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import botocore.exceptions

from common.aws import AWS_FAILURES, aws_errors, error_code

SPOT, ON_DEMAND = "spot", "on-demand"


@dataclass(frozen=True)
class QuotaRef:
    code: str
    name: str
    market: str


# Quota group → (on-demand quota, spot quota); codes as listed by
# `aws service-quotas list-service-quotas --service-code ec2`. The spot quotas are those of the EC2
# user guide's "Spot Instance quotas" table
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html): P5 spot has a quota
# of its own ("All P5 Spot Instance Requests", L-C4BD4855) beside "All P4, P3 and P2 Spot Instance
# Requests" (L-7212CCBC), while on-demand every P type counts against "Running On-Demand P
# instances" (https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html).
_ON_DEMAND_P = QuotaRef("L-417A185B", "Running On-Demand P instances", ON_DEMAND)
_GROUPS = {
    "standard": (
        QuotaRef("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", ON_DEMAND),
        QuotaRef("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", SPOT),
    ),
    "g": (
        QuotaRef("L-DB2E81BA", "Running On-Demand G and VT instances", ON_DEMAND),
        QuotaRef("L-3819A6DF", "All G and VT Spot Instance Requests", SPOT),
    ),
    "p": (_ON_DEMAND_P, QuotaRef("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests", SPOT)),
    "p5": (_ON_DEMAND_P, QuotaRef("L-C4BD4855", "All P5 Spot Instance Requests", SPOT)),
    "f": (
        QuotaRef("L-74FC7D96", "Running On-Demand F instances", ON_DEMAND),
        QuotaRef("L-88CF9481", "All F Spot Instance Requests", SPOT),
    ),
    "inf": (
        QuotaRef("L-1945791B", "Running On-Demand Inf instances", ON_DEMAND),
        QuotaRef("L-B5D1601B", "All Inf Spot Instance Requests", SPOT),
    ),
    "x": (
        QuotaRef("L-7295265B", "Running On-Demand X instances", ON_DEMAND),
        QuotaRef("L-E3A00192", "All X Spot Instance Requests", SPOT),
    ),
    "dl": (
        QuotaRef("L-6E869C2A", "Running On-Demand DL instances", ON_DEMAND),
        QuotaRef("L-85EED4F7", "All DL Spot Instance Requests", SPOT),
    ),
    "trn": (
        QuotaRef("L-2C3B7624", "Running On-Demand Trn instances", ON_DEMAND),
        QuotaRef("L-6B0D517C", "All Trn Spot Instance Requests", SPOT),
    ),
}
# Family letters (longest first wins: "inf" before "i", "dl" before "d", "trn" before "t") → group.
_FAMILY_GROUP = {
    "g": "g",
    "vt": "g",
    "f": "f",
    "inf": "inf",
    "x": "x",
    "dl": "dl",
    "trn": "trn",
    **{letter: "standard" for letter in "acdhimrtz"},
}
# P generations → group; a generation the table does not list (e.g. P6) has no documented spot
# quota here, so it is left unchecked (None) rather than checked against a neighbour's.
_P_GENERATION = {"2": "p", "3": "p", "4": "p", "5": "p5"}


def group_of(instance_type: str) -> str | None:
    """``g5.xlarge`` → "g", ``p5.48xlarge`` → "p5", ``p4d.24xlarge`` → "p", ``trn1.2xlarge`` →
    "trn", ``m7i.large`` → "standard"; None for families without a vCPU quota here (e.g.
    high-memory u-, HPC)."""
    m = re.match(r"^([a-z]+)(\d*)", instance_type.split(".")[0])
    if not m:
        return None
    letters, generation = m.groups()
    if letters.startswith("hpc"):
        return None  # HPC types: on-demand only, under their own quota
    if letters == "p":
        return _P_GENERATION.get(generation)
    for prefix in sorted(_FAMILY_GROUP, key=len, reverse=True):
        if letters.startswith(prefix):
            return _FAMILY_GROUP[prefix]
    return None


def quota_for(instance_type: str, market: str) -> QuotaRef | None:
    group = group_of(instance_type)
    if group is None:
        return None
    on_demand, spot = _GROUPS[group]
    return spot if market == SPOT else on_demand


def markets_of(config_market: str) -> list[str]:
    return {"spot": [SPOT], "on-demand": [ON_DEMAND]}.get(config_market, [SPOT, ON_DEMAND])


class QuotaUnknown(Exception):
    """Service Quotas could not say (no permission, not available): the reason."""


def value(sq, code: str) -> float:
    """The quota's applied value (the default when none was ever applied), in vCPUs."""
    try:
        return float(sq.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except botocore.exceptions.ClientError as e:
        if error_code(e) != "NoSuchResourceException":
            raise QuotaUnknown(f"Service Quotas refused ({error_code(e)})") from None
    except AWS_FAILURES as e:
        raise QuotaUnknown(f"Service Quotas unreachable ({type(e).__name__})") from None
    try:
        return float(sq.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except AWS_FAILURES as e:
        why = error_code(e) if isinstance(e, botocore.exceptions.ClientError) else type(e).__name__
        raise QuotaUnknown(
            f"Service Quotas has no value (NoSuchResourceException; its default: {why})"
        ) from None


def request_command(code: str, desired: int, region: str) -> str:
    return (
        f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
        f"--desired-value {desired} --region {region}"
    )


def request_increase(sq, code: str, desired: int) -> dict:
    """File an increase to ``desired`` vCPUs; AWS's RequestedQuota (Id, Status, CaseId...)."""
    with aws_errors(f"requesting {desired} vCPUs for quota {code}"):
        return sq.request_service_quota_increase(
            ServiceCode="ec2", QuotaCode=code, DesiredValue=float(desired)
        )["RequestedQuota"]
