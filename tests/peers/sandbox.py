"""The sandbox a boot script runs in for real: a private mount namespace (`unshare`) where /etc,
/usr/local and /var/lib are overlays whose writes land in the test's folder, /tmp is the test's
own, and stand-ins for `shutdown`, `systemctl` and `logger` come first on PATH and record their
calls. The machine's own shutdown/systemctl binaries are covered by a guard that records "REAL ..."
and refuses; every run asserts it was never reached.

Used by the boot-script tests (tests/cloud/test_userdata*.py) and the idle watch's tunnel test
(tests/remote/test_tunnel.py); the `sandbox` fixture gives one per test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.peers.sshd import require_binaries

OVERLAID = ["/etc", "/usr/local", "/var/lib"]
UNIT = "/etc/systemd/system/spotrun-idle-watch.service"

# Mounts, then the command. The guard covers the real binaries behind every name that could stop
# this machine, in case a script ever called them by absolute path.
MOUNT = r"""set -e
R="$1"; shift
for d in /etc /usr/local /var/lib; do
  n="$(echo "$d" | tr / _)"
  mkdir -p "$R/upper$n" "$R/work$n"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$R/upper$n,workdir=$R/work$n" "$d"
done
for n in shutdown systemctl poweroff reboot halt; do
  f="$(command -v "$n")" || continue
  mount --bind "$R/guard" "$(readlink -f "$f")"
done
# A checkout cloned under /tmp (a CI clone may be) stays reachable: its interpreter and code.
for keep in $(echo "${SANDBOX_KEEP:-}" | tr : ' '); do
  mkdir -p "$R/tmp/${keep#/tmp/}"
  mount --bind "$keep" "$R/tmp/${keep#/tmp/}"
done
mount --rbind "$R/tmp" /tmp
set +e
export PATH="$R/bin:$PATH"
exec "$@"
"""

RECORDER = """#!/bin/bash
echo "$(basename "$0") $*" >> {log}
"""
GUARD = """#!/bin/bash
echo "REAL $0 $*" >> {log}
exit 1
"""
# systemctl as an Ubuntu release has it, for sshd only. MODE: `socket` (24.04: ssh.socket active,
# its port generated from sshd_config at daemon-reload) or `service` (22.04: ssh.service runs sshd,
# and the legacy ssh.socket, if started, listens on 22). The port sshd listens on is kept in LISTEN
# for the stand-in ss.
SYSTEMCTL = """#!/bin/bash
echo "systemctl $*" >> {log}
mode="$(cat {state}/mode)"
configured() {{
  p="$(sed -n 's/^Port //p' /etc/ssh/sshd_config.d/*.conf 2>/dev/null | tail -1)"; echo "${{p:-22}}"
}}
case "$*" in
  "is-active --quiet ssh.socket") [ "$mode" = socket ]; exit $? ;;
  daemon-reload) [ "$mode" = socket ] && configured > {state}/generated ;;
  "restart ssh.socket")
    if [ "$mode" = socket ]; then cat {state}/generated > {state}/listen; else echo 22 > {state}/listen; fi ;;
  "restart ssh.service")
    [ "$mode" = service ] && configured > {state}/listen ;;
esac
exit 0
"""
SS = """#!/bin/bash
echo "ss $*" >> {log}
case "$*" in
  *"-Hltn ( sport = :$(cat {state}/listen) )"*) echo "LISTEN 0 128 0.0.0.0:$(cat {state}/listen) 0.0.0.0:*" ;;
esac
"""


def _unshare() -> list[str]:
    require_binaries("unshare", "ss", "tmux")
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    return ["unshare", "--user", "--map-root-user", "--mount"]


class Sandbox:
    """A root for one boot: overlays, a private /tmp, stand-ins on PATH, a log of their calls."""

    def __init__(self, root: Path, *, sshd_units: str | None = None):
        self.root = root
        self.log = root / "calls.log"
        self.state = root / "state"
        for d in ("bin", "tmp", "state"):
            (root / d).mkdir()
        self.log.touch()
        self._script("guard", GUARD)
        self._script("bin/shutdown", RECORDER)
        self._script("bin/logger", RECORDER)
        self._script("bin/sleep", RECORDER)  # the boot's wait for a moved sshd port passes at once
        if sshd_units:
            (self.state / "mode").write_text(sshd_units)
            (self.state / "listen").write_text("22")
            self._script("bin/systemctl", SYSTEMCTL)
            self._script("bin/ss", SS)
        else:
            self._script("bin/systemctl", RECORDER)

    def _script(self, rel: str, template: str) -> None:
        path = self.root / rel
        path.write_text(template.format(log=self.log, state=self.state))
        path.chmod(0o755)

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [*_unshare(), "bash", "-c", MOUNT, "mount", str(self.root), *argv]
        repo = Path(__file__).resolve().parents[2]
        keep = str(repo) if repo.is_relative_to("/tmp") else ""
        env = {**os.environ, "SANDBOX_KEEP": keep}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        assert "REAL " not in self.calls(), self.calls()
        return proc

    def boot(self, user_data: str) -> subprocess.CompletedProcess:
        script = self.root / "user-data"
        script.write_text(user_data)
        proc = self.run("bash", str(script))
        assert proc.returncode == 0, proc.stderr
        return proc

    def tick(self) -> subprocess.CompletedProcess:
        """One run of the idle watch, as its timer starts it (the unit's ExecStart)."""
        exec_start = re.search(r"^ExecStart=(.+)$", self.file(UNIT).read_text(), re.M).group(1)
        proc = self.run(exec_start)
        assert proc.returncode == 0, proc.stderr
        return proc

    def file(self, path: str) -> Path:
        """Where a file the boot wrote under an overlaid folder really is."""
        for d in OVERLAID:
            if path.startswith(d + "/"):
                return self.root / ("upper" + d.replace("/", "_")) / path[len(d) + 1 :]
        raise ValueError(path)

    def calls(self, name: str | None = None) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [ln for ln in lines if name is None or ln.split(" ", 1)[0] == name]

    def idle_since(self, seconds_ago: float) -> None:
        state = self.file("/var/lib/spotrun/idle-since")
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(f"{int(time.time() - seconds_ago)}\n")

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        """tmux on a server whose socket the watch finds at /tmp/tmux-<uid>/default."""
        sock = self.root / "tmp" / f"tmux-{os.getuid()}" / "default"
        sock.parent.mkdir(mode=0o700, exist_ok=True)
        return subprocess.run(
            ["tmux", "-f", "/dev/null", "-S", str(sock), *args], capture_output=True, text=True
        )


@pytest.fixture
def sandbox():
    # Not under /tmp: the namespace's /tmp is the sandbox's own.
    root = Path(tempfile.mkdtemp(prefix="srboot", dir="/var/tmp"))
    box = Sandbox(root)
    yield box
    box.tmux("kill-server")
    shutil.rmtree(root, ignore_errors=True)
