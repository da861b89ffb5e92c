"""Where spotrun keeps its local files. Everything hangs off the home folder (``$HOME``) or
``SPOTRUN_HOME``, so a test can point both at a temporary folder.

Every name that becomes part of a path here passes ec2.names first, so no key, machine or run name
can lead outside ~/.ssh, ~/.spotrun or outputs/ (whatever the caller checked before)."""

from __future__ import annotations

import os
from pathlib import Path

from ec2 import names


def spotrun_home() -> Path:
    """Local cache and state: registry, known_hosts files, SSH control sockets."""
    return Path(os.environ.get("SPOTRUN_HOME") or Path.home() / ".spotrun")


def ssh_dir() -> Path:
    return Path.home() / ".ssh"


def key_file(key_name: str) -> Path:
    """The private key of an EC2 key pair: ``~/.ssh/<key>.pem``, mode 0400."""
    return ssh_dir() / f"{names.key_name(key_name)}.pem"


def registry_file() -> Path:
    return spotrun_home() / "registry.json"


def known_hosts_file(name: str) -> Path:
    """Per-instance known_hosts: a relaunched instance with the same name gets a fresh file, so
    accept-new never meets a stale key, and no other host's key is ever replaced."""
    return spotrun_home() / "known_hosts" / names.instance_name(name, "machine name")


def control_dir() -> Path:
    """SSH ControlMaster sockets (kept short: socket paths are limited to ~100 bytes)."""
    return spotrun_home() / "cm"


def outputs_dir(name: str) -> Path:
    """What `fab download` brings back, and the run history of `fab run`."""
    return Path("outputs") / names.instance_name(name, "machine name")
