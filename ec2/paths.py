"""Where spotrun keeps its local files. Everything hangs off the home folder (``$HOME``) or
``SPOTRUN_HOME``, so a test can point both at a temporary folder.

Every name that becomes part of a path here passes ec2.names first, so no key, machine or run name
can lead outside ~/.ssh, ~/.spotrun or outputs/ (whatever the caller checked before)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ec2 import names

# A Unix socket's path must fit in sun_path, NUL included: 104 bytes on macOS, 108 on Linux.
SUN_PATH_MAX = 104
# ssh names a control socket %C (a 40-character hex hash) and first binds it under a temporary
# name, "<path>.<16 random characters>" (OpenSSH mux.c, muxserver_listen), then renames it.
CONTROL_NAME_LEN = 40
CONTROL_TEMP_SUFFIX_LEN = 17


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


def control_socket_fits(folder: Path) -> bool:
    """Whether ssh can bind its control sockets in `folder` on every laptop (macOS's limit)."""
    longest = len(os.fsencode(folder)) + 1 + CONTROL_NAME_LEN + CONTROL_TEMP_SUFFIX_LEN
    return longest < SUN_PATH_MAX


def control_dir() -> Path:
    """SSH ControlMaster sockets: `<spotrun home>/cm`, or, when that path is too long for a socket
    (a long home folder; ssh would stop with "too long for Unix domain socket"), a folder in /tmp
    named after the user and a hash of the spotrun home, so it stays the same between commands."""
    preferred = spotrun_home() / "cm"
    if control_socket_fits(preferred):
        return preferred
    tag = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:8]
    return Path("/tmp") / f"spotrun-{os.getuid()}-{tag}"


def outputs_dir(name: str) -> Path:
    """What `fab download` brings back, and the run history of `fab run`."""
    return Path("outputs") / names.instance_name(name, "machine name")


def bench_dir() -> Path:
    """`fab bench` results, one JSON file per instance type × GPU count × config shape."""
    return spotrun_home() / "bench"
