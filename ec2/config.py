"""Launch defaults: ``configs/aws.yaml`` as a typed dataclass, with dotted ``--set`` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.config import ConfigError, load_config
from ec2.cloud import s3scope

DEFAULT_CONFIG = Path("configs/aws.yaml")


@dataclass
class AwsConfig:
    # Default instance name for every task (`--name` overrides).
    name: str = "spotrun"
    # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's region.
    region: str | None = None
    profile: str | None = None
    # Tried in order of current spot price, with zones, until one launches.
    instance_types: list[str] = field(default_factory=lambda: ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"])
    # Empty: every zone of the region.
    zones: list[str] = field(default_factory=list)
    market: Literal["spot", "on-demand", "spot-then-on-demand"] = "spot"
    # None (recommended by AWS): pay the current spot price, capped at on-demand.
    max_price: float | None = None
    # "auto": the latest Deep Learning AMI of `ami_flavour`; or an ami-... id.
    ami: str = "auto"
    # "auto": the OSS-driver PyTorch DLAMI with the highest PyTorch on the newest Ubuntu LTS (a
    # pinned flavour such as oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04 goes stale in months).
    ami_flavour: str = "auto"
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    # Who may own the image the describe_images fallback picks: "amazon", or "self" / an account id
    # for an organisation's own copies of the DLAMI.
    ami_owners: list[str] = field(default_factory=lambda: ["amazon"])
    root_volume_gb: int = 200
    ssh_user: str = "ubuntu"
    ssh_port: int = 22
    # Which address SSH dials: the public IP, the private IP (VPN, bastion), or the instance id
    # (for an SSM ProxyCommand, where %h must be the instance id).
    ssh_host: Literal["public-ip", "private-ip", "instance-id"] = "public-ip"
    # OpenSSH ProxyCommand (%h host, %p port, %r user), e.g. a bastion (`ssh -W %h:%p bastion`) or
    # `aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p`.
    ssh_proxy_command: str | None = None
    key_name: str = "spotrun"
    # Import this public key instead of creating a new key pair (private key must sit beside it).
    import_public_key: str | None = None
    # "auto": the caller's public address /32. 0.0.0.0/0 needs `allow_open_ssh: true`.
    ssh_cidr: str = "auto"
    allow_open_ssh: bool = False
    security_group_name: str = "spotrun-ssh"
    vpc_id: str | None = None
    subnet_id: str | None = None
    # "auto": spotrun makes a role + instance profile per instance reaching only `s3_access` and
    # the run's prefixes (ec2.cloud.iam); a name or ARN: use that profile; None: no profile.
    iam_instance_profile: str | None = "auto"
    # Prefixes the instance may reach: s3://bucket/prefix (read) or rw:s3://bucket/prefix
    # (read/write). `fab run` / `fab train` add the run's dataset_dir, checkpoint_dir and
    # checkpoint_backup_uri themselves.
    s3_access: list[str] = field(default_factory=list)
    # Hard cost cap: the instance shuts itself down (and so terminates) after this many hours.
    max_hours: float = 12.0
    # Shut down after this many minutes with no tmux session and no SSH login; 0 turns it off.
    idle_minutes: int = 30
    tags: dict[str, str] = field(default_factory=dict)
    # How long a launch waits for `running`, then for an SSH banner, before giving up (and
    # terminating the instance unless --keep-on-failure).
    running_timeout_s: float = 600
    ssh_ready_timeout_s: float = 600
    # Where spotrun keeps code, venv and runs on the machine (~ is the remote user's home).
    remote_dir: str = "~/spotrun"
    # `fab run`: where the notice watcher copies a local checkpoint folder on a spot notice
    # (s3://bucket/prefix; unset: checkpoints come back by `fab download` only), and how many
    # replacements it launches after interruptions before giving up.
    checkpoint_backup_uri: str | None = None
    max_recoveries: int = 3
    # A workspace volume that outlives spot instances (ec2/cloud/volumes.py): its name (null: none),
    # size for its creation, and where it is mounted on the machine.
    volume_name: str | None = None
    volume_gb: int = 100
    volume_mount: str = "~/work"

    def __post_init__(self) -> None:
        if not self.instance_types:
            raise ConfigError("instance_types is empty; list at least one, e.g. [g5.xlarge]")
        if self.max_hours <= 0:
            raise ConfigError("max_hours must be positive: it is the instance's hard cost cap")
        if self.market not in ("spot", "on-demand", "spot-then-on-demand"):
            raise ConfigError(f"market {self.market!r}: use spot, on-demand or spot-then-on-demand")
        if self.max_price is not None and self.max_price <= 0:
            raise ConfigError("max_price must be positive, or unset (recommended by AWS)")
        if self.iam_instance_profile == "":
            raise ConfigError("iam_instance_profile is empty; use auto, a profile name or ARN, or null")
        s3scope.from_config(self.s3_access)  # a malformed entry fails now, not at launch
        if not 1 <= self.volume_gb <= 16384:
            raise ConfigError("volume_gb must be between 1 and 16384 (the gp3 limits, in GiB)")
        if self.root_volume_gb < 8:
            raise ConfigError("root_volume_gb must be at least 8 (the Deep Learning AMI needs ~100)")


def load_aws_config(
    path: str | Path | None = DEFAULT_CONFIG, overrides: list[str] | None = None
) -> AwsConfig:
    """Load the launch config; a missing default file means built-in defaults."""
    if path is not None and Path(path) == DEFAULT_CONFIG and not Path(path).exists():
        path = None
    return load_config(AwsConfig, path, overrides)
