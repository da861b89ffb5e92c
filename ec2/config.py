"""Launch defaults: ``configs/aws.yaml`` as a typed dataclass, with dotted ``--set`` overrides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from common.checks import FieldError, Range, check_fields, checked
from common.config import ConfigError, blame_field, load_config
from common.s3uri import check_s3_uri
from ec2 import names
from ec2.cloud import s3scope

DEFAULT_CONFIG = Path("configs/aws.yaml")


# AWS's own shapes for ids and names (a value that cannot match is refused before any call).
_REGION, _ZONE, _INSTANCE_TYPE = names.REGION, names.ZONE, names.INSTANCE_TYPE
_AMI = re.compile(r"ami-[0-9a-f]{8,17}")
_VPC = re.compile(r"vpc-[0-9a-f]{8,17}")
_SUBNET = re.compile(r"subnet-[0-9a-f]{8,17}")
_OWNER = re.compile(r"amazon|self|aws-marketplace|\d{12}")
_FLAVOUR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
# IAM instance profile names: up to 128 of [\w+=,.@-]; or the profile's ARN.
_PROFILE = re.compile(r"[\w+=,.@-]{1,128}|arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]{1,512}")


def _pattern(pattern: re.Pattern[str], value: str, key: str, example: str) -> bool:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigError(f"{key} {value!r} is not of the form AWS uses; e.g. {example}")
    return True


def _step_seconds(values: dict, key: str) -> bool:
    if not isinstance(values, dict):
        raise ConfigError(f"{key} maps instance types to seconds per step, e.g. {{g5.xlarge: 0.31}}")
    for t, seconds in values.items():
        _pattern(_INSTANCE_TYPE, t, f"{key} key", "g5.xlarge")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ConfigError(f"{key}.{t} {seconds!r} is not a positive number of seconds per step")
    return True


def _iso_time(value, key: str) -> bool:
    """An ISO 8601 time with its zone (a time without one would depend on the laptop's clock zone)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ConfigError(f"{key} is an ISO 8601 time with its zone, e.g. 2026-12-07T09:00:00Z")
    return True


def _each(pattern: re.Pattern[str], values: list[str], key: str, example: str) -> bool:
    for i, value in enumerate(values):
        _pattern(pattern, value, f"{key}[{i}]", example)
    return True


@dataclass
class AwsConfig:
    # Default instance name for every task (`--name` overrides).
    name: str = checked("spotrun", names.instance_name)
    # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's region.
    region: str | None = checked(None, lambda v, k: _pattern(_REGION, v, k, "us-east-1"))
    profile: str | None = checked(None, names.one_line)
    # Tried in order of current spot price, with zones, until one launches.
    instance_types: list[str] = checked(
        default_factory=lambda: ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"],
        check=lambda v, k: _each(_INSTANCE_TYPE, v, k, "g5.xlarge"),
    )
    # Empty: every zone of the region.
    zones: list[str] = checked(default_factory=list, check=lambda v, k: _each(_ZONE, v, k, "us-east-1a"))
    market: Literal["spot", "on-demand", "spot-then-on-demand"] = "spot"
    # How launches order instance_types: "price" (the current $/h) or "run_cost" (what the whole
    # run costs: the `fab bench` step time of the run's config × the price, interruptions
    # included; types never benchmarked follow the measured ones by $/h). Detached groups then
    # launch spot by priority in that order (capacity-optimized-prioritized).
    choose_by: Literal["price", "run_cost"] = "price"
    # run_cost's billed seconds per step per type: `fab run` / `fab launch --train-config` fill it
    # from the bench results (~/.spotrun/bench) of the run's config; a value set here wins.
    step_seconds: dict[str, float] = checked(default_factory=dict, check=_step_seconds)
    # None (recommended by AWS): pay the current spot price, capped at on-demand.
    max_price: float | None = checked(None, Range(above=0, why="USD per hour; unset: the spot price"))
    # "auto": the latest Deep Learning AMI of `ami_flavour`; or an ami-... id.
    ami: str = checked("auto", lambda v, k: v == "auto" or _pattern(_AMI, v, k, "ami-0123456789abcdef0"))
    # "auto": the OSS-driver PyTorch DLAMI with the highest PyTorch on the newest Ubuntu LTS (a
    # pinned flavour such as oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04 goes stale in months).
    ami_flavour: str = checked(
        "auto", lambda v, k: _pattern(_FLAVOUR, v, k, "oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04")
    )
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    # Who may own the image the describe_images fallback picks: "amazon", or "self" / an account id
    # for an organisation's own copies of the DLAMI.
    ami_owners: list[str] = checked(
        default_factory=lambda: ["amazon"],
        check=lambda v, k: _each(_OWNER, v, k, "amazon, self or 123456789012"),
    )
    # gp3: 1 GiB to 16 TiB; the Deep Learning AMI itself needs ~100 GB, its snapshot at least 8.
    root_volume_gb: int = checked(200, Range(8, 16384, why="GiB of gp3; the DLAMI needs ~100"))
    ssh_user: str = checked("ubuntu", names.SSH_USER.check)
    ssh_port: int = checked(22, Range(1, 65535, why="a TCP port"))
    # Which address SSH dials: the public IP, the private IP (VPN, bastion), or the instance id
    # (for an SSM ProxyCommand, where %h must be the instance id).
    ssh_host: Literal["public-ip", "private-ip", "instance-id"] = "public-ip"
    # OpenSSH ProxyCommand (%h host, %p port, %r user), e.g. a bastion (`ssh -W %h:%p bastion`) or
    # `aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p`.
    ssh_proxy_command: str | None = checked(None, names.one_line)
    key_name: str = checked("spotrun", names.key_name)
    # Import this public key instead of creating a new key pair (private key must sit beside it).
    import_public_key: str | None = checked(None, names.one_line)
    # "auto": the caller's public address /32. 0.0.0.0/0 needs `allow_open_ssh: true`.
    ssh_cidr: str = "auto"
    allow_open_ssh: bool = False
    security_group_name: str = checked("spotrun-ssh", names.SECURITY_GROUP.check)
    vpc_id: str | None = checked(None, lambda v, k: _pattern(_VPC, v, k, "vpc-0123456789abcdef0"))
    subnet_id: str | None = checked(None, lambda v, k: _pattern(_SUBNET, v, k, "subnet-0123456789abcdef0"))
    # "auto": spotrun makes a role + instance profile per instance reaching only `s3_access` and
    # the run's prefixes (ec2.cloud.iam); a name or ARN: use that profile; None: no profile.
    iam_instance_profile: str | None = checked(
        "auto", lambda v, k: _pattern(_PROFILE, v, k, "auto, spotrun-s3 (a name) or its ARN")
    )
    # Prefixes the instance may reach: s3://bucket/prefix (read) or rw:s3://bucket/prefix
    # (read/write). `fab run` / `fab train` add the run's dataset_dir, checkpoint_dir and
    # checkpoint_backup_uri themselves.
    s3_access: list[str] = checked(default_factory=list, check=lambda v, k: s3scope.from_config(v))
    # Hard cost cap: the instance shuts itself down (and so terminates) after this many hours.
    max_hours: float = checked(12.0, Range(above=0, why="the instance's hard cost cap"))
    # Shut down after this many minutes with no tmux session and no SSH login; 0 turns it off.
    idle_minutes: int = checked(30, Range(0, why="0 turns the idle shutdown off"))
    tags: dict[str, str] = checked(default_factory=dict, check=names.tags)
    # How long a launch waits for `running`, then for an SSH banner, before giving up (and
    # terminating the instance unless --keep-on-failure).
    running_timeout_s: float = checked(600, Range(above=0, why="seconds"))
    ssh_ready_timeout_s: float = checked(600, Range(above=0, why="seconds"))
    # Where spotrun keeps code, venv and runs on the machine (~ is the remote user's home).
    remote_dir: str = checked("~/spotrun", names.one_line)
    # `fab run`: where the notice watcher copies a local checkpoint folder on a spot notice
    # (s3://bucket/prefix; unset: checkpoints come back by `fab download` only), and how many
    # replacements it launches after interruptions before giving up.
    checkpoint_backup_uri: str | None = checked(
        None, lambda v, k: check_s3_uri(v, k, "s3://my-bucket/checkpoints")
    )
    max_recoveries: int = checked(3, Range(0, 100, why="replacement instances after interruptions"))
    # The run's budget and deadline (ec2/journey/budget.py, docs/budget.md). After this many
    # interruptions the next attempt launches on-demand (null: never).
    on_demand_after: int | None = checked(None, Range(1, 100, why="interruptions before on-demand"))
    # Stop with a checkpoint once the run's instances have cost this much (null: no cap).
    max_cost_usd: float | None = checked(None, Range(above=0, why="USD for the whole run"))
    # When the run must be done (ISO 8601 with its zone); when the projected finish misses it the
    # next attempt launches on-demand.
    deadline: str | datetime | None = checked(None, _iso_time)  # YAML reads an ISO time as a datetime
    # On a rebalance recommendation (an interruption is more likely soon): none (the watcher logs
    # it) or checkpoint (the trainer saves last.pt at its next step and trains on).
    on_rebalance: Literal["none", "checkpoint"] = "none"
    # `fab run --detach`: where the code bundle goes (s3://bucket/prefix; unset: beside the
    # checkpoints, in the run's own prefix).
    bundle_uri: str | None = checked(None, lambda v, k: check_s3_uri(v, k, "s3://my-bucket/bundles"))
    # A workspace volume that outlives spot instances (ec2/cloud/volumes.py): its name (null: none),
    # size for its creation, and where it is mounted on the machine.
    volume_name: str | None = checked(None, lambda v, k: names.VOLUME.check(v, k))
    volume_gb: int = checked(100, Range(1, 16384, why="GiB of gp3"))
    volume_mount: str = checked("~/work", names.one_line)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.instance_types:
            raise ConfigError("instance_types is empty; list at least one, e.g. [g5.xlarge]")
        if self.market not in ("spot", "on-demand", "spot-then-on-demand"):
            raise ConfigError(f"market {self.market!r}: use spot, on-demand or spot-then-on-demand")
        if self.deadline is not None and not isinstance(self.deadline, str):
            self.deadline = self.deadline.isoformat()
        if self.iam_instance_profile == "":
            raise ConfigError("iam_instance_profile is empty; use auto, a profile name or ARN, or null")


def load_aws_config(
    path: str | Path | None = DEFAULT_CONFIG, overrides: list[str] | None = None
) -> AwsConfig:
    """Load the launch config; a missing default file means built-in defaults."""
    if path is not None and Path(path) == DEFAULT_CONFIG and not Path(path).exists():
        path = None
    try:
        return load_config(AwsConfig, path, overrides, override_label="--set")
    except FieldError as e:
        raise blame_field(e, path, overrides, "--set") from e
