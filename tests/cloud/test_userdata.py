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
from tests.peers.sandbox import RECORDER, UNIT, Sandbox


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
