"""`fab tunnel` against the real sshd: a server on the machine's loopback reached from a local
port, Ctrl-C closing it, a busy local port, a remote port nothing listens on, and the idle watch
seeing the tunnel while it is open and not after."""

from __future__ import annotations

import http.server
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from ec2.cloud.userdata import build_user_data
from ec2.remote import services
from ec2.remote.ssh import Machine
from ec2.remote.tunnel import Forward, Tunnel, TunnelError, plan_forwards
from tasks import interactive, remote
from tests.peers.fab_process import fab_process, free_port, get, read_line_with
from tests.peers.imds import wait_until

REPO = Path(__file__).resolve().parents[2]


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello through the tunnel"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def remote_http():
    """An HTTP server on loopback: on the sshd host, so on 'the machine'."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_fab_tunnel_reaches_a_server_on_the_machine_and_ctrl_c_closes_it(sshd, remote_http, tmp_path):
    sshd.record(name="box")
    local = free_port()
    proc = fab_process(
        "tunnel", "--name", "box", "--port", str(remote_http), "--local-port", str(local), cwd=tmp_path
    )
    try:
        line = read_line_with(proc, "http://")
        assert line.split()[0] == f"http://127.0.0.1:{local}/" and f"box:{remote_http}" in line
        assert get(f"http://127.0.0.1:{local}/") == (200, "hello through the tunnel")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "tunnel closed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{local}/")


def test_several_ports_in_one_tunnel(sshd, remote_http):
    record = sshd.record(name="box")
    second = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=second.serve_forever, daemon=True).start()
    try:
        forwards = plan_forwards([remote_http, second.server_address[1]], [free_port(), free_port()])
        with Tunnel(record, forwards):
            for f in forwards:
                assert get(f.url)[0] == 200
    finally:
        second.shutdown()
        second.server_close()


def test_a_busy_local_port_is_one_line_suggesting_local_port(sshd, remote_http, capfd):
    sshd.record(name="box")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(Exit) as exit_:
            interactive.tunnel(Context(), name="box", port=[str(remote_http)], local_port=[str(busy)])
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    assert (
        err.startswith(f"error: local port {busy} is already in use; pass --local-port")
        and err.count("\n") == 1
    )


def test_ssh_own_bind_failure_is_the_same_line(sshd, remote_http, monkeypatch):
    """The port can be taken between our check and ssh's bind: ssh's failure reads the same."""
    record = sshd.record(name="box")
    monkeypatch.setattr("ec2.remote.tunnel.local_port_busy", lambda port: False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(TunnelError, match=f"local port {busy} is already in use; pass --local-port"):
            Tunnel(record, [Forward(busy, remote_http)]).open()


def test_a_remote_port_nothing_listens_on_is_said_once(sshd):
    record = sshd.record(name="box")
    notes: list[str] = []
    forward = Forward(free_port(), free_port())
    with Tunnel(record, [forward], note=notes.append):
        for _ in range(2):
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                get(forward.url)
        wait_until(lambda: notes, 15, "the refused note")
        time.sleep(0.5)  # a second refusal must not add a second note
    assert len(notes) == 1
    assert notes[0].startswith(f"nothing listens on port {forward.remote_port} on box")


def test_bad_port_arguments_are_one_line():
    with pytest.raises(TunnelError, match="no port to forward; pass --port"):
        plan_forwards([])
    with pytest.raises(TunnelError, match="--port 'web' is not a TCP port"):
        plan_forwards(["web"])
    with pytest.raises(TunnelError, match="2 --local-port for 1 --port"):
        plan_forwards([80], [8080, 8081])
    with pytest.raises(TunnelError, match="local port 9000 given twice"):
        plan_forwards([80, 81], [9000, 9000])
    assert plan_forwards(["6006", "8888"], ["16006"]) == [Forward(16006, 6006), Forward(8888, 8888)]


def test_idle_watch_counts_an_open_tunnel_and_not_a_service_session(sandbox, sshd, remote_http):
    """A Jupyter/TensorBoard session alone is idle; an open tunnel is activity; once the tunnel
    closes the machine is idle again and the watch shuts it down. A run's session still counts."""
    boot = sandbox  # the instance's boot script and idle watch, run for real (tests/peers/sandbox.py)
    boot.boot(build_user_data(max_hours=12, idle_minutes=15, ssh_port=sshd.port))
    state = boot.file("/var/lib/spotrun/idle-since")
    # A server in a service session, as `fab jupyter` leaves it (a live pane).
    assert boot.tmux("new-session", "-d", "-s", services.session_name("jupyter"), "sleep 600").returncode == 0
    boot.tick()
    assert state.exists()  # idle from now: the service session does not count

    record = sshd.record(name="box")
    forward = Forward(free_port(), remote_http)
    with Tunnel(record, [forward]):
        assert get(forward.url)[0] == 200
        boot.idle_since(60 * 60)
        boot.tick()
        assert not state.exists()  # busy: the idle clock was reset
    assert len(boot.calls("shutdown")) == 1  # the max_hours cap only

    wait_until(lambda: not _ssh_established(sshd.port), 15, "the tunnel's connection to close")
    boot.idle_since(60 * 60)
    boot.tick()
    assert boot.calls("shutdown")[1:] == ["shutdown -h now spotrun: idle for 15 minutes"]

    # A run's session is work.
    assert boot.tmux("new-session", "-d", "-s", "spotrun-train", "sleep 600").returncode == 0
    boot.idle_since(60 * 60)
    boot.tick()
    assert not state.exists() and len(boot.calls("shutdown")) == 2


def _ssh_established(port: int) -> bool:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    return bool(out.strip())


def test_run_cmd_runs_in_the_code_folder_and_cwd_changes_it(sshd, capfd):
    record = sshd.record(name="box")
    c = Context()
    remote.run_cmd(c, cmd="pwd", name="box")
    out = capfd.readouterr()
    assert out.out.strip() == pwd.getpwuid(os.getuid()).pw_dir and "does not exist yet (fab sync)" in out.err
    Machine(record).run(f"mkdir -p {record.remote_dir}/code/sub /tmp/elsewhere-{sshd.port}")
    remote.run_cmd(c, cmd="pwd", name="box")
    assert capfd.readouterr().out.strip() == f"{record.remote_dir}/code"
    remote.run_cmd(c, cmd="pwd", name="box", cwd="sub")
    assert capfd.readouterr().out.strip() == f"{record.remote_dir}/code/sub"
    remote.run_cmd(c, cmd="pwd", name="box", cwd=f"/tmp/elsewhere-{sshd.port}")
    assert capfd.readouterr().out.strip() == f"/tmp/elsewhere-{sshd.port}"
    with pytest.raises(Exit) as exit_:
        remote.run_cmd(c, cmd="echo never", name="box", cwd="missing")
    assert exit_.value.code == 1 and "never" not in capfd.readouterr().out
