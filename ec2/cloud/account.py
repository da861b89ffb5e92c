"""Who and where: the caller's identity (for the owner tag) and a region check that works offline."""

from __future__ import annotations

import functools

from common import aws
from common.aws import aws_errors
from ec2.errors import ConfigError


def check_region(region: str) -> None:
    """Refuse a region name botocore does not know in any partition, before any call hangs on a
    DNS name that does not exist."""
    known = _known_regions()
    if region not in known:
        close = sorted(r for r in known if r.split("-")[0] == region.split("-")[0])[:6]
        hint = f" (did you mean one of: {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown AWS region {region!r}{hint}; set `region:` in configs/aws.yaml "
            "or --set region=us-east-1"
        )


@functools.cache
def _known_regions() -> frozenset[str]:
    """Every region botocore's endpoint data names, in any partition (read once per process)."""
    sess = aws.new_session()
    known: set[str] = set()
    for partition in sess.get_available_partitions():
        known.update(sess.get_available_regions("ec2", partition_name=partition))
    return frozenset(known)


@functools.cache
def partition_of_region(region: str) -> str:
    """The ARN partition a region belongs to (``aws``, ``aws-cn``, ``aws-us-gov``, ...), from
    botocore's own endpoint data, offline: every ARN spotrun writes begins ``arn:<partition>:``
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html). An unknown region
    gives ``aws``."""
    try:
        return aws.new_session().get_partition_for_region(region) or "aws"
    except Exception:  # noqa: BLE001 (botocore raises UnknownRegionError or ValueError by version)
        return "aws"


def resolve_region(cfg) -> str:
    region = aws.region_of(cfg.region, cfg.profile)
    check_region(region)
    return region


def caller_arn(region: str, profile: str | None = None) -> str:
    """The STS caller ARN: tagged on every instance as spotrun:owner, and the first call of a
    launch, so missing or expired credentials fail before anything is created."""
    with aws_errors("checking your AWS identity (sts get-caller-identity)"):
        return aws.client("sts", region, profile).get_caller_identity()["Arn"]


def client(cfg, service: str, region: str | None = None):
    """A client of `service` with the config's profile, in `region` (default: the config's own,
    as set: None lets the profile or AWS_REGION decide). The tasks get their clients here."""
    return aws.client(service, region or cfg.region, cfg.profile)


def regions(cfg, every: bool) -> list[str]:
    """The config's region, or (every) all regions enabled for the account (DescribeRegions:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeRegions.html)."""
    region = resolve_region(cfg)
    if not every:
        return [region]
    with aws_errors("listing the account's regions"):
        found = aws.client("ec2", region, cfg.profile).describe_regions()["Regions"]
    return sorted(r["RegionName"] for r in found)
