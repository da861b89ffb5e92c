"""The boot script (user data) run for real: the max_hours cap, the idle watch it installs, and
moving sshd to another port on either Ubuntu generation.

The scripts run unchanged, as root, in a private mount namespace (`unshare`): /etc, /usr/local and
/var/lib are overlays whose writes land in the test's folder, /tmp is the test's own (so only the
test's tmux servers are seen), and stand-ins for `shutdown`, `systemctl` and `logger` come first on
PATH and record their calls. As a guard, the machine's own shutdown/systemctl binaries are covered
by a script that records "REAL ..." and refuses; every test asserts it was never reached. Real
`ss`, `tmux`, `date` and bash do the rest (a stand-in `ss` only where the test plays an Ubuntu
release's sshd units).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ec2.cloud.userdata import IDLE_SCRIPT_PATH, PORT_CONF, build_user_data
from ec2.remote.ssh import Machine
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_boot_schedules_the_cap_and_installs_the_idle_watch(sandbox):
    sandbox.boot(build_user_data(max_hours=1.5, idle_minutes=15))

    assert sandbox.calls("shutdown") == ["shutdown -h +90 spotrun: max_hours reached"]
    assert sandbox.calls("systemctl") == [
        "systemctl daemon-reload",
        "systemctl enable --now spotrun-idle-watch.timer",
    ]
    watch = sandbox.file(IDLE_SCRIPT_PATH)
    assert stat.S_IMODE(watch.stat().st_mode) == 0o755
    assert f"ExecStart={IDLE_SCRIPT_PATH}\n" in sandbox.file(UNIT).read_text()
    timer = sandbox.file("/etc/systemd/system/spotrun-idle-watch.timer").read_text()
    assert "OnUnitActiveSec=1min" in timer and "WantedBy=timers.target" in timer
    # Port 22 is the AMI's own: sshd is left alone.
    assert not sandbox.file(PORT_CONF).exists()


def test_no_idle_watch_when_idle_minutes_is_zero(sandbox):
    sandbox.boot(build_user_data(max_hours=2, idle_minutes=0))
    assert sandbox.calls() == ["shutdown -h +120 spotrun: max_hours reached"]
    assert not sandbox.file(IDLE_SCRIPT_PATH).exists() and not sandbox.file(UNIT).exists()


def test_idle_watch_counts_from_the_first_idle_minute_and_shuts_down_past_the_limit(sandbox):
    sandbox.boot(build_user_data(max_hours=12, idle_minutes=15, ssh_port=22))
    state = sandbox.file("/var/lib/spotrun/idle-since")
    before = int(time.time())

    sandbox.tick()  # nothing running: idle from now on
    assert before <= int(state.read_text()) <= time.time() + 1
    sandbox.tick()  # still idle, well under the limit
    assert sandbox.calls("shutdown") == ["shutdown -h +720 spotrun: max_hours reached"]

    sandbox.idle_since(14 * 60)  # a minute short of the limit
    sandbox.tick()
    assert len(sandbox.calls("shutdown")) == 1

    sandbox.idle_since(15 * 60 + 5)  # past it
    sandbox.tick()
    assert sandbox.calls("shutdown")[1:] == ["shutdown -h now spotrun: idle for 15 minutes"]
    assert sandbox.calls("logger") == ["logger -t spotrun idle for 15 minutes: shutting down"]


def test_a_live_tmux_pane_keeps_the_machine_and_a_dead_one_does_not(sandbox):
    sandbox.boot(build_user_data(max_hours=12, idle_minutes=15, ssh_port=_free_port()))
    state = sandbox.file("/var/lib/spotrun/idle-since")
    assert sandbox.tmux("new-session", "-d", "-s", "run", "sleep 600").returncode == 0

    sandbox.idle_since(60 * 60)
    sandbox.tick()
    assert not state.exists() and len(sandbox.calls("shutdown")) == 1  # busy: the idle clock restarts

    # The run ended; its pane stays for inspection (remain-on-exit), which is not activity.
    sandbox.tmux("set-option", "-w", "-t", "run", "remain-on-exit", "on")
    sandbox.tmux("respawn-pane", "-k", "-t", "run", "true")
    deadline = time.monotonic() + 20
    while sandbox.tmux("list-panes", "-a", "-F", "#{pane_dead}").stdout.strip() != "1":
        assert time.monotonic() < deadline, "the pane did not die"
        time.sleep(0.05)
    sandbox.idle_since(60 * 60)
    sandbox.tick()
    assert sandbox.calls("shutdown")[1:] == ["shutdown -h now spotrun: idle for 15 minutes"]


def test_an_ssh_session_on_the_moved_port_keeps_the_machine(sandbox, sshd):
    """A real sshd on another port: the boot finds it listening with the real `ss -ltn`, and an
    open session counts as activity on that port."""
    proc = sandbox.boot(build_user_data(max_hours=12, idle_minutes=15, ssh_port=sshd.port))
    assert f"sshd listens on port {sshd.port}" in proc.stdout

    session = subprocess.Popen(
        Machine(sshd.record(), control=False).argv("sleep 120"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        filt = f"( sport = :{sshd.port} )"
        deadline = time.monotonic() + 30
        while not subprocess.run(["ss", "-Htn", "state", "established", filt], capture_output=True).stdout:
            assert time.monotonic() < deadline and session.poll() is None, "no SSH session came up"
            time.sleep(0.05)
        sandbox.idle_since(60 * 60)
        sandbox.tick()
        assert not sandbox.file("/var/lib/spotrun/idle-since").exists()
    finally:
        session.kill()
        session.wait()
    assert len(sandbox.calls("shutdown")) == 1

    # The session gone (and no tmux), the watch starts counting again.
    sandbox.tick()
    assert sandbox.file("/var/lib/spotrun/idle-since").exists()


@pytest.fixture
def ubuntu():
    """A sandbox whose systemctl and ss behave like a release's sshd units (`ubuntu(mode)`)."""
    roots = []

    def make(mode: str) -> Sandbox:
        root = Path(tempfile.mkdtemp(prefix="srboot", dir="/var/tmp"))
        roots.append(root)
        return Sandbox(root, sshd_units=mode)

    yield make
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _sshd_calls(box: Sandbox) -> list[str]:
    return [c for c in box.calls("systemctl") if "idle-watch" not in c]


def test_port_on_a_socket_activated_sshd_regenerates_the_socket(ubuntu):
    """Ubuntu 24.04: ssh.socket is active; its port comes from sshd_config at daemon-reload."""
    box = ubuntu("socket")
    proc = box.boot(build_user_data(max_hours=1, idle_minutes=0, ssh_port=2222))
    assert box.file(PORT_CONF).read_text() == "Port 2222\n"
    assert _sshd_calls(box) == [
        "systemctl is-active --quiet ssh.socket",
        "systemctl daemon-reload",
        "systemctl restart ssh.socket",
    ]
    assert (box.state / "listen").read_text().strip() == "2222"
    assert "sshd listens on port 2222" in proc.stdout and not proc.stderr


def test_port_on_a_service_sshd_restarts_the_service_not_the_legacy_socket(ubuntu):
    """Ubuntu 22.04: restarting its legacy ssh.socket would stop sshd and listen on 22."""
    box = ubuntu("service")
    proc = box.boot(build_user_data(max_hours=1, idle_minutes=0, ssh_port=2222))
    assert _sshd_calls(box) == ["systemctl is-active --quiet ssh.socket", "systemctl restart ssh.service"]
    assert (box.state / "listen").read_text().strip() == "2222"
    assert "sshd listens on port 2222" in proc.stdout and not proc.stderr
    assert any("-Hltn ( sport = :2222 )" in c for c in box.calls("ss"))


def test_port_not_listening_says_so_on_the_console(ubuntu):
    """sshd never comes up on the port (a systemctl whose restarts change nothing): the boot
    waits, then says so where `aws ec2 get-console-output` shows it, and goes on."""
    box = ubuntu("service")
    box._script("bin/systemctl", RECORDER)
    proc = box.boot(build_user_data(max_hours=1, idle_minutes=15, ssh_port=2222))
    assert "sshd is not listening on port 2222" in proc.stderr
    assert len(box.calls("sleep")) == 60
    assert box.file(IDLE_SCRIPT_PATH).exists()  # the cost guards are still installed
