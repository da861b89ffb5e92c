"""SSH readiness: `running` in EC2 only means the VM booted; sshd answers a little later.

The probe opens the same path ssh will use (a TCP connection, or the ProxyCommand when one is set)
and waits for the server's ``SSH-`` banner. It never authenticates, so it needs no key and leaves
no known_hosts entry.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import time
from collections.abc import Callable

from ec2.errors import ConnectionLost
from ec2.registry import MachineRecord

PROBE_TIMEOUT_S = 5.0
PROGRESS_EVERY_S = 10.0


def expand_proxy_command(command: str, host: str, port: int, user: str) -> str:
    """OpenSSH's ProxyCommand tokens: %h host, %p port, %r user, %% a literal percent."""
    out, i = [], 0
    while i < len(command):
        ch = command[i]
        if ch == "%" and i + 1 < len(command):
            token = command[i + 1]
            out.append({"h": host, "p": str(port), "r": user, "%": "%"}.get(token, "%" + token))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _banner_from_socket(host: str, port: int, timeout: float) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        return s.recv(64)


def _banner_from_proxy(command: str, timeout: float) -> bytes:
    """Run the ProxyCommand as ssh would (through the shell) and read what it prints first."""
    proc = subprocess.Popen(
        command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return b""
            return proc.stdout.read1(64)
    finally:
        proc.kill()
        proc.wait()


def probe(record: MachineRecord, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One attempt: does an SSH server answer with its banner?"""
    try:
        if record.proxy_command:
            command = expand_proxy_command(record.proxy_command, record.host, record.port, record.user)
            banner = _banner_from_proxy(command, timeout)
        else:
            banner = _banner_from_socket(record.host, record.port, timeout)
    except OSError:
        return False
    return banner.startswith(b"SSH-")


def wait_ssh(
    record: MachineRecord, deadline_s: float, *, out: Callable[[str], None] = print, interval_s: float = 2.0
) -> float:
    """Probe until the banner arrives; seconds waited. ConnectionLost after ``deadline_s``."""
    via = " via ProxyCommand" if record.proxy_command else ""
    out(f"waiting for SSH on {record.host}:{record.port}{via} (up to {deadline_s:g} s)")
    start = time.monotonic()
    last_note = start
    while True:
        elapsed = time.monotonic() - start
        if probe(record, timeout=min(PROBE_TIMEOUT_S, max(deadline_s - elapsed, 0.5))):
            waited = time.monotonic() - start
            out(f"SSH ready on {record.name} after {waited:.0f} s")
            return waited
        now = time.monotonic()
        if now - start >= deadline_s:
            raise ConnectionLost(
                f"no SSH banner from {record.host}:{record.port}{via} within {deadline_s:g} s; the "
                "instance may still be booting (raise ssh_ready_timeout_s) or your address is not "
                "allowed (`fab allow-my-ip`)"
            )
        if now - last_note >= PROGRESS_EVERY_S:
            out(f"  ... still waiting for SSH ({now - start:.0f} s)")
            last_note = now
        time.sleep(min(interval_s, max(deadline_s - (now - start), 0.05)))
