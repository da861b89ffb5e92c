"""The ~/.ssh config entries, so `ssh spotrun-exp1` and an editor's remote-SSH reach a machine.

spotrun owns one include file (``~/.ssh/config.d/spotrun``) and never edits the user's own entries:
the only change to ``~/.ssh/config`` is one ``Include`` line, added once at the top (an Include
below a ``Host`` block would apply only inside that block). Both files are written atomically.
"""

from __future__ import annotations

import os
import re

from common.atomic import atomic_write_text
from ec2 import paths
from ec2.registry import MachineRecord

HEADER = "# Managed by spotrun (fab launch / adopt / terminate / forget): edits here are replaced.\n"
_HOST_LINE = re.compile(r"^Host\s+(\S+)\s*$")


def include_file():
    return paths.ssh_dir() / "config.d" / "spotrun"


def include_line() -> str:
    # Relative Include paths are resolved against ~/.ssh by OpenSSH.
    return "Include config.d/spotrun"


def host_alias(name: str) -> str:
    return f"spotrun-{name}"


def _quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def entry(record: MachineRecord) -> str:
    """The `Host spotrun-<name>` block for one machine (a pure function, tested as a string)."""
    lines = [
        f"Host {host_alias(record.name)}",
        f"    HostName {record.host}",
        f"    User {record.user}",
        f"    Port {record.port}",
        f"    IdentityFile {_quote(record.key_path)}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {_quote(str(record.known_hosts))}",
        "    StrictHostKeyChecking accept-new",
        "    ServerAliveInterval 15",
    ]
    if record.proxy_command:
        lines.append(f"    ProxyCommand {record.proxy_command}")
    return "\n".join(lines) + "\n"


def _blocks(text: str) -> dict[str, str]:
    """alias → block text of the managed file (comments outside blocks are dropped)."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        match = _HOST_LINE.match(line)
        if match:
            current = match.group(1)
            blocks[current] = [line]
        elif current is not None and line.strip():
            blocks[current].append(line)
    return {alias: "".join(lines) for alias, lines in blocks.items()}


def _write_blocks(blocks: dict[str, str]) -> None:
    body = "\n".join(blocks[alias] for alias in sorted(blocks))
    path = include_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(path, HEADER + ("\n" + body if body else ""), mode=0o600)


def _read_blocks() -> dict[str, str]:
    path = include_file()
    return _blocks(path.read_text()) if path.exists() else {}


def ensure_include() -> None:
    """Add the Include line to the top of ~/.ssh/config once (creating the file 0600 if missing)."""
    config = paths.ssh_dir() / "config"
    config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not config.exists():
        atomic_write_text(config, include_line() + "\n", mode=0o600)
        return
    text = config.read_text()
    if any(line.strip() == include_line() for line in text.splitlines()):
        return
    mode = os.stat(config).st_mode & 0o777
    atomic_write_text(config, f"{include_line()}\n\n{text}", mode=mode)


def write_entry(record: MachineRecord) -> None:
    """Add or replace the machine's entry."""
    blocks = _read_blocks()
    blocks[host_alias(record.name)] = entry(record)
    _write_blocks(blocks)
    ensure_include()


def remove_entry(name: str) -> bool:
    """Drop the machine's entry; False if there was none. The Include line stays (harmless)."""
    blocks = _read_blocks()
    if blocks.pop(host_alias(name), None) is None:
        return False
    _write_blocks(blocks)
    return True


def entries() -> dict[str, str]:
    """alias → block, as currently written."""
    return _read_blocks()
