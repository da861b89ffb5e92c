"""The local registry: name → how to reach the machine. A cache; AWS tags are the truth for
launched instances (``status`` reconciles), while adopted machines live only here.

Stored as one JSON file, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_json
from ec2 import paths
from ec2.errors import InstanceNotFound, ToolkitError


@dataclass(frozen=True)
class MachineRecord:
    name: str
    host: str
    user: str = "ubuntu"
    port: int = 22
    key_path: str = ""
    instance_id: str | None = None  # None for an adopted machine
    region: str | None = None
    instance_type: str | None = None
    zone: str | None = None
    market: str | None = None  # "spot" | "on-demand"
    launched_at: str | None = None  # ISO 8601, UTC
    # Where spotrun keeps code, venv and runs on the machine (~ is the remote user's home).
    remote_dir: str = "~/spotrun"
    # OpenSSH ProxyCommand used to reach the machine (bastion, SSM), or None for a direct dial.
    proxy_command: str | None = None
    # The address other machines of a multi-node run reach it at (torchrun's rendezvous).
    private_ip: str | None = None

    @property
    def adopted(self) -> bool:
        return self.instance_id is None

    @property
    def known_hosts(self) -> Path:
        return paths.known_hosts_file(self.name)


def _load_raw(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ToolkitError(
            f"{path} is not valid JSON; move it aside and run `fab status` to rebuild it from AWS"
        ) from None
    return data.get("machines", {})


def load_all(path: Path | None = None) -> dict[str, MachineRecord]:
    path = path or paths.registry_file()
    fields = {f.name for f in dataclasses.fields(MachineRecord)}
    return {
        name: MachineRecord(**{k: v for k, v in rec.items() if k in fields})
        for name, rec in _load_raw(path).items()
    }


def get(name: str, path: Path | None = None) -> MachineRecord:
    records = load_all(path)
    if name not in records:
        known = ", ".join(sorted(records)) or "none"
        raise InstanceNotFound(
            f"no machine named {name!r} in the registry (known: {known}); "
            f"launch one with `fab launch --name {name}` or register one with `fab adopt`"
        )
    return records[name]


def put(record: MachineRecord, path: Path | None = None) -> None:
    path = path or paths.registry_file()
    raw = _load_raw(path)
    raw[record.name] = dataclasses.asdict(record)
    atomic_write_json(path, {"machines": raw})


def remove(name: str, path: Path | None = None) -> bool:
    path = path or paths.registry_file()
    raw = _load_raw(path)
    if name not in raw:
        return False
    del raw[name]
    atomic_write_json(path, {"machines": raw})
    return True
