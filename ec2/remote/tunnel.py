"""Local port forwarding to a machine: `ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:REMOTE`, one ssh
process per forwarded port, with the same options as every other connection (`ssh_options`:
key, per-machine known_hosts, keep-alives, ProxyCommand).

Why its own connection rather than `ssh -O forward` on the shared ControlMaster (checked against
OpenSSH 9.2): a forward added to the master outlives the command that added it (an `ssh -N -L`
that finds a master hands the forward over and exits at once), the master's stderr is not ours to
read, so a connection refused at the far end could not be reported, and the master lingers for
ControlPersist after the last use. A connection of its own closes when the tunnel closes (Ctrl-C),
which is also what the instance's idle watch sees: an established SSH connection while the tunnel
is open, none once it is closed. The shared master still serves the quick commands around it
(reachability, starting TensorBoard or Jupyter).

Both ends bind loopback only: the laptop's port is not offered to its network, and the services on
the instance listen on 127.0.0.1.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ec2.errors import ConnectionLost, ToolkitError
from ec2.registry import MachineRecord
from ec2.remote.ssh import SSH_BIN, prepare_local, ssh_options

LOOPBACK = "127.0.0.1"
# ssh's own line when the far end refused the connection a forwarded channel asked for.
_REFUSED = "open failed: connect failed"
_PROHIBITED = "open failed: administratively prohibited"


class TunnelError(ToolkitError):
    """A tunnel could not be opened, or closed under us."""


@dataclass(frozen=True)
class Forward:
    local_port: int
    remote_port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.local_port}/"

    @property
    def spec(self) -> str:
        return f"{LOOPBACK}:{self.local_port}:{LOOPBACK}:{self.remote_port}"


def _port(value, flag: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        raise TunnelError(
            f"{flag} {value!r} is not a TCP port; use a number from 1 to 65535 (e.g. {flag} 6006)"
        )
    return port


def plan_forwards(remote_ports: list, local_ports: list | None = None) -> list[Forward]:
    """Pair each --port with a --local-port (by position; missing ones: the same number)."""
    if not remote_ports:
        raise TunnelError("no port to forward; pass --port P (repeatable), e.g. --port 6006")
    local_ports = list(local_ports or [])
    if len(local_ports) > len(remote_ports):
        raise TunnelError(
            f"{len(local_ports)} --local-port for {len(remote_ports)} --port; give at most one per --port"
        )
    forwards = []
    for i, remote in enumerate(remote_ports):
        remote = _port(remote, "--port")
        local = _port(local_ports[i], "--local-port") if i < len(local_ports) else remote
        forwards.append(Forward(local, remote))
    seen = [f.local_port for f in forwards]
    dup = sorted({p for p in seen if seen.count(p) > 1})
    if dup:
        raise TunnelError(f"local port {dup[0]} given twice; pass a distinct --local-port for each --port")
    return forwards


def tunnel_argv(record: MachineRecord, forward: Forward) -> list[str]:
    """`ssh -N -L ...` for one forward; exits at once (255) if the local port cannot be bound."""
    return [
        SSH_BIN,
        *ssh_options(record, control=False),
        "-o",
        "ExitOnForwardFailure=yes",
        "-N",
        "-L",
        forward.spec,
        record.host,
    ]


def local_port_busy(port: int) -> bool:
    """Is something already listening on 127.0.0.1:port? (Binding is the question ssh will ask.)
    SO_REUSEADDR as ssh sets it: connections of a closed tunnel lingering in TIME_WAIT do not
    count, only a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def busy_message(port: int) -> str:
    return (
        f"local port {port} is already in use; pass --local-port with a free one "
        f"(e.g. --local-port {port + 1})"
    )


class Tunnel:
    """Open forwards to a machine until closed. `with Tunnel(record, forwards, note=print): ...`

    `note` gets one line per forward the first time the far end refuses a connection (nothing
    listens on that port on the machine) and when sshd refuses forwarding altogether."""

    def __init__(
        self,
        record: MachineRecord,
        forwards: list[Forward],
        *,
        note: Callable[[str], None] = print,
        ready_timeout_s: float = 30.0,
    ):
        self.record = record
        self.forwards = forwards
        self.note = note
        self.ready_timeout_s = ready_timeout_s
        self._procs: list[subprocess.Popen] = []
        self._stderr: dict[int, list[str]] = {}
        self._readers: list[threading.Thread] = []

    def __enter__(self) -> Tunnel:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        for f in self.forwards:
            if local_port_busy(f.local_port):
                raise TunnelError(busy_message(f.local_port))
        prepare_local(self.record)
        try:
            for f in self.forwards:
                self._start(f)
            for proc, f in zip(self._procs, self.forwards, strict=True):
                self._wait_bound(proc, f)
        except BaseException:
            self.close()
            raise

    def _start(self, forward: Forward) -> None:
        proc = subprocess.Popen(
            tunnel_argv(self.record, forward),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        lines = self._stderr.setdefault(forward.local_port, [])
        reader = threading.Thread(target=self._read_stderr, args=(proc, forward, lines), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _read_stderr(self, proc: subprocess.Popen, forward: Forward, lines: list[str]) -> None:
        said = set()
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if _REFUSED in line and "refused" not in said:
                said.add("refused")
                self.note(
                    f"nothing listens on port {forward.remote_port} on {self.record.name}: a connection "
                    f"through {forward.url} was refused there; start the server on the machine "
                    "(the tunnel stays open)"
                )
            elif _PROHIBITED in line and "prohibited" not in said:
                said.add("prohibited")
                self.note(
                    f"sshd on {self.record.name} refuses port forwarding (AllowTcpForwarding); "
                    "allow it in its sshd_config"
                )

    def _wait_bound(self, proc: subprocess.Popen, forward: Forward) -> None:
        """Until ssh listens on the local port (binding it ourselves fails), or ssh exits.
        Not a connection attempt: that would open a channel and might be refused far away."""
        end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise self._failed(proc, forward)
            if local_port_busy(forward.local_port):
                return
            time.sleep(0.05)
        raise TunnelError(
            f"the tunnel to {self.record.name} did not open within {self.ready_timeout_s:g} s; "
            "check the machine with `fab status`"
        )

    def _failed(self, proc: subprocess.Popen, forward: Forward) -> ToolkitError:
        proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        text = "\n".join(self._stderr.get(forward.local_port, []))
        if "Address already in use" in text or "cannot listen to port" in text:
            return TunnelError(busy_message(forward.local_port))
        tail = text.strip().splitlines()[-1] if text.strip() else f"ssh exited {proc.returncode}"
        r = self.record
        return ConnectionLost(
            f"the tunnel to {r.name} ({r.user}@{r.host}:{r.port}) closed: {tail}; check that it is "
            "running (`fab status`) and that your address is allowed (`fab allow-my-ip`)"
        )

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until Ctrl-C (KeyboardInterrupt propagates) or until a connection drops (raises)."""
        while True:
            for proc, f in zip(self._procs, self.forwards, strict=True):
                if proc.poll() is not None:
                    # Ctrl-C at a terminal reaches ssh too (same process group): let our own
                    # KeyboardInterrupt land first, so a deliberate close is not reported as a loss.
                    time.sleep(0.3)
                    raise self._failed(proc, f)
            time.sleep(poll_s)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)
