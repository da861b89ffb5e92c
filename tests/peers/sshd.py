"""A real OpenSSH server on loopback, standing in for the instance's SSH server.

`SshdServer` is a plain context manager (the benchmark uses it too); the `sshd` fixture wraps it
and points HOME and SPOTRUN_HOME at temporary folders so no test touches the user's files.

- a random free port on 127.0.0.1, a throwaway ed25519 host key, `UsePAM no`, `StrictModes no`;
- it trusts an ed25519 client key made here (standing in for the key the toolkit created), 0400;
- `SetEnv TMUX_TMPDIR=...` gives every session through it a private tmux server, so tests never
  see or kill the user's tmux sessions; teardown kills that server and the SSH control masters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binaries(*names: str) -> None:
    """Skip when a binary is missing, but fail in CI (a skip there would hide a broken setup)."""
    missing = [n for n in names if not (shutil.which(n) or Path(n).exists())]
    if missing:
        msg = f"needs {', '.join(missing)} (apt-get install openssh-server rsync tmux)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@dataclass
class SshdServer:
    """Start with `with SshdServer(root) as server:`; `root` should be a short path (socket paths
    under it must stay below ~100 bytes)."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    user: str = ""
    key_path: Path | None = None
    tmux_tmpdir: Path | None = None
    # Extra variables every session gets (SetEnv): stand-ins for what an instance has without
    # spotrun sending it, e.g. its IAM role (AWS_* for moto) and SPOTRUN_IMDS_URL. No spaces.
    env: dict[str, str] | None = None
    # The login's home folder, for a machine of its own beside another on this host (two cluster
    # nodes): sessions start there with HOME set to it, so `~/x` (rsync's relative paths too)
    # means a different folder on each.
    home: Path | None = None
    _proc: subprocess.Popen | None = None

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def stand_in_gpus(self, count: int) -> None:
        """An `nvidia-smi` in the sessions' PATH listing ``count`` GPUs as `nvidia-smi -L` prints
        them, so the toolkit starts one rank per GPU (the ranks then run on the CPU with gloo)."""
        smi = self.bin_dir / "nvidia-smi"
        uuid = "0000-0000-0000-000000000000"
        lines = [f'echo "GPU {i}: NVIDIA A10G (UUID: GPU-{i:08d}-{uuid})"' for i in range(count)]
        smi.write_text("#!/bin/sh\n" + "".join(f"{line}\n" for line in lines))
        smi.chmod(0o755)

    def __enter__(self) -> SshdServer:
        root = self.root
        (root / "etc").mkdir(parents=True, exist_ok=True)
        host_key = root / "etc" / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        self.key_path = root / "client_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "spotrun-test", "-f", str(self.key_path)],
            check=True,
        )
        self.key_path.chmod(0o400)
        authorized = root / "etc" / "authorized_keys"
        authorized.write_text(Path(f"{self.key_path}.pub").read_text())
        self.tmux_tmpdir = root / "tmux"
        self.tmux_tmpdir.mkdir(exist_ok=True)
        self.bin_dir.mkdir(exist_ok=True)
        self.port = _free_port()
        self.user = (
            os.environ.get("USER")
            or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        )
        config = root / "etc" / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {root / 'etc' / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "MaxSessions 50",
                    "MaxStartups 50",
                    # A private tmux server, and a bin/ a test can drop stand-ins into (nvidia-smi).
                    f"SetEnv TMUX_TMPDIR={self.tmux_tmpdir} PATH={self.bin_dir}:{os.environ['PATH']}"
                    + "".join(f" {k}={v}" for k, v in sorted((self.env or {}).items()))
                    + (f" HOME={self.home}" if self.home else ""),
                    "Subsystem sftp internal-sftp",
                    *(
                        [f'ForceCommand cd {self.home} && exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"']
                        if self.home
                        else []
                    ),
                    "",
                ]
            )
        )
        # sshd insists on its privilege separation folder (normally made by the service unit).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._start()
        return self

    def _start(self) -> None:
        etc = self.root / "etc"
        self._proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(etc / "sshd_config"), "-E", str(self.root / "sshd.log")]
        )
        self._wait_listening()

    def restart(self) -> None:
        """Start again on the same port with the same host key (after `stop()`: a machine back up)."""
        self.stop()
        self._start()

    def throttled(self, bytes_per_s: int, hold: Path | None = None, hold_after: int = 0) -> str:
        """A ProxyCommand reaching this sshd through a slow link (tests/peers/throttle.py); with
        `hold`, each direction stops after `hold_after` bytes while that file exists."""
        script = Path(__file__).with_name("throttle.py")
        held = f" {hold} {int(hold_after)}" if hold is not None else ""
        return f"{sys.executable} {script} {self.host} {self.port} {bytes_per_s}{held}"

    def _wait_listening(self, deadline_s: float = 10.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        """Stop the listener and every connection it accepted (its children), by pid."""
        if self._proc is None or self._proc.poll() is not None:
            return
        children = subprocess.run(
            ["pgrep", "-P", str(self._proc.pid)], capture_output=True, text=True
        ).stdout.split()
        self._proc.terminate()
        self._proc.wait(timeout=10)
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass

    def authorize(self, private_key: str | Path) -> None:
        """Also trust this key (e.g. the key pair `fab launch` created under ~/.ssh)."""
        pub = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True, text=True, check=True
        ).stdout
        with open(self.root / "etc" / "authorized_keys", "a") as f:
            f.write(pub)

    def record(self, name: str = "test", remote_dir: str | None = None, **fields):
        """A MachineRecord pointing here, written to the registry (remote_dir inside root)."""
        from ec2 import registry

        rec = registry.MachineRecord(
            name=name,
            host=self.host,
            port=self.port,
            user=self.user,
            key_path=str(self.key_path),
            remote_dir=remote_dir or str(self.root / "remote"),
            **fields,
        )
        registry.put(rec)
        return rec

    def __exit__(self, *exc) -> None:
        from ec2.remote.ssh import close_masters

        close_masters()
        # The private tmux server of this sshd only (see SetEnv above).
        for sock in self.tmux_tmpdir.glob("tmux-*/*"):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
        self.stop()


@pytest.fixture
def sshd(monkeypatch):
    """A running sshd; HOME and SPOTRUN_HOME point at a short temporary folder."""
    require_binaries(SSHD, "ssh", "rsync", "tmux")
    root = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SPOTRUN_HOME", str(root / "s"))
    try:
        with SshdServer(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)
