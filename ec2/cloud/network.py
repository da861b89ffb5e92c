"""Network access: the caller's address, and the security group that admits SSH (on the configured
`ssh_port`) only from it.

The group is found by name and VPC (and carries spotrun tags); every SSH rule spotrun adds has the
description RULE_DESCRIPTION, so `allow-my-ip` can revoke exactly its own old rules and leave any
rule a person added by hand.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import urllib.error
import urllib.request

from common.aws import aws_errors
from ec2.errors import AwsError, ConfigError, ToolkitError

CHECKIP_URL = "https://checkip.amazonaws.com"
RULE_DESCRIPTION = "spotrun ssh"
OPEN = {"0.0.0.0/0", "::/0"}


def public_ip(timeout: float = 10.0) -> str:
    """The caller's public IPv4 address as AWS sees it (SPOTRUN_CHECKIP_URL overrides the service,
    which tests serve from loopback)."""
    url = os.environ.get("SPOTRUN_CHECKIP_URL") or CHECKIP_URL
    try:
        # A fresh opener reads the proxy settings (https_proxy, no_proxy) as they are now;
        # urlopen's shared one keeps those of its first use in the process.
        with urllib.request.build_opener().open(url, timeout=timeout) as response:
            text = response.read(100).decode().strip()
    except (urllib.error.URLError, OSError) as e:
        raise ToolkitError(
            f"could not learn your public IP from {url} ({e}); set `ssh_cidr:` to your address, "
            "e.g. --set ssh_cidr=203.0.113.7/32"
        ) from None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ToolkitError(
            f"{url} answered {text[:40]!r}, not an IPv4 address; set `ssh_cidr:` to your address/32"
        ) from None


def ssh_cidr(cfg) -> str:
    """The CIDR allowed to reach the SSH port. World-open only when the config says so, with a warning."""
    cidr = f"{public_ip()}/32" if cfg.ssh_cidr == "auto" else cfg.ssh_cidr
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f"ssh_cidr {cidr!r} is not a CIDR; use `auto` or e.g. 203.0.113.7/32") from None
    if network.version != 4:
        raise ConfigError(f"ssh_cidr {cidr!r}: only IPv4 is supported; use `auto` or an IPv4 /32")
    cidr = str(network)
    if cidr in OPEN:
        if not cfg.allow_open_ssh:
            raise ConfigError(
                f"ssh_cidr {cidr} opens SSH to the whole internet; use `auto` (your address /32), "
                "or set allow_open_ssh: true if you really mean it"
            )
        print(
            f"warning: SSH (port {cfg.ssh_port}) will be open to {cidr}: anyone can try to log in",
            file=sys.stderr,
        )
    return cidr


def vpc_id(ec2, cfg) -> str:
    """The configured VPC, the configured subnet's VPC, or the region's default VPC."""
    if cfg.vpc_id:
        return cfg.vpc_id
    with aws_errors("finding the VPC"):
        if cfg.subnet_id:
            return ec2.describe_subnets(SubnetIds=[cfg.subnet_id])["Subnets"][0]["VpcId"]
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise AwsError(
            "this region has no default VPC; set `vpc_id:` and `subnet_id:` (a public subnet) in "
            "configs/aws.yaml, or create one with `aws ec2 create-default-vpc`",
            "NoDefaultVpc",
        )
    return vpcs[0]["VpcId"]


def find_group(ec2, name: str, vpc: str) -> dict | None:
    with aws_errors(f"looking up security group {name!r}"):
        groups = ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
        )["SecurityGroups"]
    return groups[0] if groups else None


def ensure_group(ec2, cfg, cidr: str, owner: str) -> str:
    """The tool's security group id, created if missing, admitting SSH (cfg.ssh_port) from ``cidr``."""
    vpc = vpc_id(ec2, cfg)
    group = find_group(ec2, cfg.security_group_name, vpc)
    if group is None:
        with aws_errors(f"creating security group {cfg.security_group_name!r}"):
            group_id = ec2.create_security_group(
                GroupName=cfg.security_group_name,
                Description="spotrun: SSH from the caller's address only",
                VpcId=vpc,
                TagSpecifications=[
                    {
                        "ResourceType": "security-group",
                        "Tags": [
                            {"Key": "Name", "Value": cfg.security_group_name},
                            {"Key": "spotrun:managed", "Value": "true"},
                            {"Key": "spotrun:owner", "Value": owner},
                        ],
                    }
                ],
            )["GroupId"]
        print(f"security group: created {cfg.security_group_name} ({group_id}) in {vpc}")
        existing: list[str] = []
    else:
        group_id = group["GroupId"]
        existing = ssh_cidrs(group, cfg.ssh_port)
    if cidr not in existing:
        _authorize(ec2, group_id, cidr, cfg.ssh_port)
        print(f"security group: SSH (port {cfg.ssh_port}) allowed from {cidr}")
    return group_id


def ssh_cidrs(group: dict, port: int = 22, only_ours: bool = False) -> list[str]:
    """IPv4 ranges allowed on ``port`` (only those spotrun added, when ``only_ours``)."""
    out = []
    for perm in group.get("IpPermissions", []):
        if perm.get("IpProtocol") not in ("tcp", "-1"):
            continue
        tcp = perm.get("IpProtocol") == "tcp"
        if tcp and not (perm.get("FromPort", 0) <= port <= perm.get("ToPort", -1)):
            continue
        for rng in perm.get("IpRanges", []):
            if not only_ours or rng.get("Description") == RULE_DESCRIPTION:
                out.append(rng["CidrIp"])
    return out


def _authorize(ec2, group_id: str, cidr: str, port: int) -> None:
    # Duplicate: the rule is already there (another launch added it meanwhile), which is the goal.
    with aws_errors(f"allowing SSH from {cidr}", tolerate={"InvalidPermission.Duplicate"}):
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[_rule(cidr, port)])


def _rule(cidr: str, port: int) -> dict:
    return {
        "IpProtocol": "tcp",
        "FromPort": port,
        "ToPort": port,
        "IpRanges": [{"CidrIp": cidr, "Description": RULE_DESCRIPTION}],
    }


def allow_my_ip(ec2, cfg, owner: str) -> tuple[str, list[str], str]:
    """Replace spotrun's SSH rules with one for the current address: (group id, revoked, added)."""
    cidr = ssh_cidr(cfg)
    group_id = ensure_group(ec2, cfg, cidr, owner)
    group = find_group(ec2, cfg.security_group_name, vpc_id(ec2, cfg))
    stale = [c for c in ssh_cidrs(group or {}, cfg.ssh_port, only_ours=True) if c != cidr]
    if stale:
        with aws_errors(f"revoking old SSH rules on {group_id}"):
            ec2.revoke_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[{**_rule(c, cfg.ssh_port), "IpRanges": [{"CidrIp": c}]} for c in stale],
            )
    return group_id, stale, cidr


def subnets_for_zones(ec2, cfg, zones: list[str]) -> list[str]:
    """The subnets an Auto Scaling group may launch in: the configured subnet, else the VPC's
    default subnet of each zone (public: the instance gets an address SSH can reach)."""
    if cfg.subnet_id:
        return [cfg.subnet_id]
    vpc = vpc_id(ec2, cfg)
    with aws_errors("finding the zones' subnets"):
        subnets = ec2.describe_subnets(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "availability-zone", "Values": zones},
                {"Name": "default-for-az", "Values": ["true"]},
            ]
        )["Subnets"]
    if not subnets:
        raise AwsError(
            f"no default subnet in {', '.join(zones)} of {vpc}; set `subnet_id:` (a public subnet)",
            "NoSubnet",
        )
    return [s["SubnetId"] for s in sorted(subnets, key=lambda s: zones.index(s["AvailabilityZone"]))]
