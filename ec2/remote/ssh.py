"""Run commands on a machine over SSH.

Transport choice: the system OpenSSH client through subprocess, not Paramiko/Fabric's Connection.
Three reasons: (1) `ControlMaster`/`ControlPersist` multiplexing makes repeated calls cost one
round trip instead of a full handshake, and only OpenSSH has it; (2) rsync must use the very same
options (`rsync -e "ssh ..."`), so one option builder serves both; (3) `attach` and `ssh` hand the
terminal to a real `ssh -t`, which Paramiko does not give. Fabric stays the task CLI (`fab`).

Options come from one pure function (`ssh_options`), tested as strings: the key only
(IdentitiesOnly), keep-alives, a connect timeout, a per-instance known_hosts file with
`StrictHostKeyChecking accept-new` (host keys are checked, never ignored) and BatchMode for
everything that is not interactive.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ec2 import paths
from ec2.errors import ConnectionLost, RemoteCommandFailed, ToolkitError
from ec2.registry import MachineRecord

SSH_BIN = "ssh"
# ssh's own exit status for "could not connect / connection dropped".
SSH_CONNECTION_ERROR = 255
CONNECT_TIMEOUT_S = 10
# The longest one command waits on a machine that does not answer (a port that accepts and says
# nothing, a dropped route), all attempts included: retries stop once another attempt would end
# past it. ConnectTimeout bounds the TCP connect and the SSH banner exchange of each attempt
# (ssh_config(5)); ServerAlive* bounds a connection that goes quiet later (4 x 15 s).
WAIT_ENV = "SPOTRUN_SSH_WAIT_S"
DEFAULT_WAIT_S = 30.0


def wait_budget() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_WAIT_S
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 3600:  # also refuses nan and inf
        raise ToolkitError(f"{WAIT_ENV}={raw!r}: must be seconds from 1 to 3600; unset it for 30")
    return value


def connect_timeout_s() -> int:
    """ssh's ConnectTimeout (whole seconds): 10, or less when the wait budget is small."""
    return max(1, min(CONNECT_TIMEOUT_S, int(wait_budget() / 3)))


CONTROL_PERSIST = "10m"


def ssh_options(
    record: MachineRecord,
    *,
    batch: bool = True,
    control: bool = True,
    connect_timeout: int | None = None,
) -> list[str]:
    """The SSH options every spotrun connection uses (also passed to rsync via -e)."""
    connect_timeout = connect_timeout or connect_timeout_s()
    opts = [
        "-i",
        record.key_path,
        "-p",
        str(record.port),
        "-o",
        f"User={record.user}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={record.known_hosts}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    if record.proxy_command:
        opts += ["-o", f"ProxyCommand={record.proxy_command}"]
    if control:
        # %C: a hash of host, port and user, so the socket path stays short (see paths.control_dir).
        opts += [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={paths.control_dir() / '%C'}",
            "-o",
            f"ControlPersist={CONTROL_PERSIST}",
        ]
    else:
        opts += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if batch:
        opts += ["-o", "BatchMode=yes"]
    return opts


def ssh_argv(
    record: MachineRecord,
    command: str | None = None,
    *,
    tty: bool = False,
    batch: bool = True,
    control: bool = True,
) -> list[str]:
    """`ssh [options] [-t] host [command]` as an argument list."""
    argv = [SSH_BIN, *ssh_options(record, batch=batch, control=control)]
    argv.append("-t" if tty else "-T")
    argv.append(record.host)
    if command is not None:
        argv.append(command)
    return argv


def rsync_rsh(record: MachineRecord, *, control: bool = True) -> str:
    """The `-e` value for rsync: the same ssh with the same options."""
    return shlex.join([SSH_BIN, *ssh_options(record, control=control)])


def prepare_local(record: MachineRecord) -> None:
    """Folders the options name must exist: known_hosts' parent and the control socket dir."""
    record.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    private_dir(paths.control_dir())


def private_dir(folder: Path) -> None:
    """Make `folder` (mode 0700) or check that the one there is the user's own: a control socket
    lets whoever can reach it run commands on the machine, and the folder may be in shared /tmp."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ToolkitError(
            f"{folder} (for SSH control sockets) is not a folder of yours; remove it, or set "
            "SPOTRUN_HOME to a short path of your own"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        folder.chmod(0o700)


def close_masters() -> None:
    """Ask every ControlMaster under our control dir to exit (a test teardown, `fab forget`)."""
    cdir = paths.control_dir()
    if not cdir.is_dir():
        return
    for sock in cdir.iterdir():
        subprocess.run(
            [SSH_BIN, "-o", f"ControlPath={sock}", "-O", "exit", "spotrun-master"],
            capture_output=True,
            timeout=10,
        )


def close_master(record: MachineRecord) -> None:
    """Close this machine's ControlMaster, if one is up (`fab forget`, a relaunch at the same address)."""
    argv = [SSH_BIN, *ssh_options(record), "-O", "exit", record.host]
    subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def backoff_delays(attempts: int, base_s: float) -> list[float]:
    """Sleeps between attempts: base, 2·base, 4·base, ... (attempts - 1 of them)."""
    return [base_s * (2**i) for i in range(max(attempts - 1, 0))]


def _default_attempts() -> int:
    return int(os.environ.get("SPOTRUN_SSH_ATTEMPTS", "4"))


def _default_backoff() -> float:
    return float(os.environ.get("SPOTRUN_SSH_BACKOFF_S", "2"))


class Machine:
    """A registered machine, reached over SSH. Creating one opens nothing."""

    def __init__(
        self,
        record: MachineRecord,
        *,
        attempts: int | None = None,
        backoff_s: float | None = None,
        control: bool = True,
        still_there: Callable[[], None] | None = None,
    ):
        self.record = record
        self.attempts = attempts if attempts is not None else _default_attempts()
        self.backoff_s = backoff_s if backoff_s is not None else _default_backoff()
        self.control = control
        # Asked after a dropped connection, before retrying: raises (e.g. InstanceGone) when the
        # machine is known to be gone, so a terminated instance is not retried for a minute and
        # then blamed on the network. The SSH layer knows nothing of AWS; tasks supply it.
        self.still_there = still_there
        self._asked = False

    def check_still_there(self, *, last: bool = False) -> None:
        """Ask `still_there` at the first dropped connection, and again when giving up (the machine
        may have ended meanwhile); not at every retry: asking AWS from an offline laptop costs
        botocore's own retries each time."""
        if self.still_there is None or (self._asked and not last):
            return
        self._asked = True
        self.still_there()

    @property
    def name(self) -> str:
        return self.record.name

    def argv(self, command: str | None = None, *, tty: bool = False) -> list[str]:
        return ssh_argv(self.record, command, tty=tty, batch=not tty, control=self.control)

    def lost(self, what: str, detail: str = "", tried: int | None = None) -> ConnectionLost:
        r = self.record
        tail = detail.strip().splitlines()[-1] if detail.strip() else "no answer"
        return ConnectionLost(
            f"cannot reach {r.name} ({r.user}@{r.host}:{r.port}) for {what} after {tried or self.attempts} "
            f"attempt(s): {tail}; check that it is running (`fab status`) and that your address is "
            f"allowed (`fab allow-my-ip`), then retry"
        )

    def run(
        self, command: str, *, check: bool = True, timeout: float | None = None, retry: bool = True
    ) -> Result:
        """Run a shell command line remotely; retry dropped connections with back-off.

        Exit 255 is ssh's own "connection failed" status; a remote command that itself exits 255
        is indistinguishable, so spotrun's own remote commands never use it.
        """
        prepare_local(self.record)
        delays = backoff_delays(self.attempts if retry else 1, self.backoff_s)
        deadline = time.monotonic() + wait_budget()
        stderr = ""
        tried = 0
        for attempt in range(len(delays) + 1):
            tried += 1
            try:
                proc = subprocess.run(
                    self.argv(command),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                raise ConnectionLost(
                    f"{self.name}: `{command[:80]}` gave no answer within {timeout:g} s; "
                    "check the machine with `fab status`"
                ) from None
            if proc.returncode != SSH_CONNECTION_ERROR:
                if check and proc.returncode != 0:
                    if retry:
                        self.reach_after_signal_death(proc.returncode, timeout)
                    raise RemoteCommandFailed(proc.returncode, command[:200], proc.stderr)
                return Result(proc.returncode, proc.stdout, proc.stderr)
            stderr = proc.stderr
            # Another attempt only if it can end (a full connect timeout) within the budget.
            more = attempt < len(delays)
            if more and time.monotonic() + delays[attempt] + connect_timeout_s() > deadline:
                more = False
            self.check_still_there(last=not more)
            if not more:
                break
            time.sleep(delays[attempt])
        raise self.lost("a command", stderr, tried)

    def stream(self, command: str, *, tty: bool = False) -> int:
        """Run with the terminal attached (stdout/stderr pass straight through); its exit code."""
        prepare_local(self.record)
        code = subprocess.run(self.argv(command, tty=tty)).returncode
        if code == SSH_CONNECTION_ERROR:
            # The connection dropped (or the command exited 255): reach the machine again, with
            # run's retries and its AWS check at the first and the last, so a machine that has gone
            # ends as InstanceGone or ConnectionLost whichever comes first, the drop or AWS's word.
            self.run("true", check=False)
        else:
            self.reach_after_signal_death(code)
        return code

    def reach_after_signal_death(self, code: int, timeout: float | None = None) -> None:
        """After a remote command died of a signal (exit 128+N), as every process on a machine
        that is shutting down does, and sshd may pass the status on before the connection drops:
        reach the machine once more, so a machine that has gone ends as the dropped-connection
        path ends (its retries, then InstanceGone from AWS or ConnectionLost), not as the
        command's own failure. A machine that answers: the caller reports the command's exit."""
        if 128 < code < SSH_CONNECTION_ERROR:
            self.run("true", check=False, timeout=timeout)

    def exec_interactive(self, command: str | None = None) -> None:
        """Replace this process with an interactive `ssh -t` (a shell, or tmux attach)."""
        prepare_local(self.record)
        argv = self.argv(command, tty=True)
        os.execvp(argv[0], argv)


def quote_path(path: str) -> str:
    """Quote a remote path for the shell, keeping a leading `~/` expandable (as "$HOME"/...)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def join_path(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])
