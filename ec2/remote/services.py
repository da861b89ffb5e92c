"""Long-lived servers on the machine that you reach through a tunnel: TensorBoard and JupyterLab.

Each runs in a tmux session of its own, `spotsvc-<service>` (a run's session is `spotrun-<run>`,
so the names never meet), with its output in `<remote_dir>/services/<service>.log` and the port
it listens on in `<service>.port`. Both listen on the machine's loopback only: they are reached
through `fab tunnel`, never from the internet. The idle watch (ec2/cloud/userdata.py) does not
count these sessions as work: a forgotten Jupyter must not keep a GPU billing until max_hours; an
open tunnel (an SSH connection) does count.

Every remote command line is built here by a pure function and tested as a string.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ec2.errors import RemoteCommandFailed, ToolkitError
from ec2.remote.runs import code_dir, venv_python
from ec2.remote.ssh import Machine, join_path, quote_path

SESSION_PREFIX = "spotsvc-"
TENSORBOARD_PORT = 6006
JUPYTER_PORT = 8888
# Installed into the run venv on first `fab jupyter` (not part of `fab setup`: most runs never
# need it). Pinned: the version the tests start.
JUPYTERLAB_SPEC = "jupyterlab==4.6.6"
# How long a freshly started server may take to listen (JupyterLab's first start builds caches).
START_TIMEOUT_S = 120
# Our own status codes for the wait (never 255: that is ssh's connection error).
_EXITED = 3
_SLOW = 4
_TOKEN = re.compile(r"^[0-9a-f]{32,}$")


def session_name(service: str) -> str:
    return SESSION_PREFIX + service


def service_dir(remote_dir: str) -> str:
    return join_path(remote_dir, "services")


def _file(remote_dir: str, service: str, ext: str) -> str:
    return quote_path(join_path(service_dir(remote_dir), f"{service}.{ext}"))


def start_command(remote_dir: str, service: str, command: str, port: int, env: str = "") -> str:
    """Start `command` (in the code dir) in the service's tmux session unless that session is up.
    Prints `started PORT` or `running PORT` (the port the running one was started with)."""
    session = shlex.quote(session_name(service))
    target = shlex.quote("=" + session_name(service))
    log, port_file = _file(remote_dir, service, "log"), _file(remote_dir, service, "port")
    pane = f"cd {quote_path(code_dir(remote_dir))} && {env}exec {command} >> {log} 2>&1"
    return (
        f"mkdir -p {quote_path(service_dir(remote_dir))}; "
        f"if tmux has-session -t {target} 2>/dev/null; then echo running $(cat {port_file}); "
        f"else echo {int(port)} > {port_file} && "
        f"tmux new-session -d -s {session} -x 200 -y 50 {shlex.quote('bash -c ' + shlex.quote(pane))} && "
        f"echo started {int(port)}; fi"
    )


def wait_command(remote_dir: str, service: str, port: int, timeout_s: int = START_TIMEOUT_S) -> str:
    """Wait until something listens on 127.0.0.1:PORT; exit 3 with the log's tail if the session
    ended first, 4 after timeout_s."""
    target = shlex.quote("=" + session_name(service))
    log = _file(remote_dir, service, "log")
    script = (
        f"for i in $(seq {int(timeout_s)}); do "
        f"if (exec 3<>/dev/tcp/127.0.0.1/{int(port)}) 2>/dev/null; then exit 0; fi; "
        f"if ! tmux has-session -t {target} 2>/dev/null; then tail -n 5 {log} >&2; exit {_EXITED}; fi; "
        "sleep 1; done; "
        f"tail -n 5 {log} >&2; exit {_SLOW}"
    )
    return "bash -c " + shlex.quote(script)


def stop_command(service: str) -> str:
    return f"tmux kill-session -t {shlex.quote('=' + session_name(service))} 2>/dev/null || true"


def tensorboard_command(remote_dir: str, logdir: str, port: int) -> str:
    return (
        f"{quote_path(venv_python(remote_dir))} -m tensorboard.main --logdir {quote_path(logdir)} "
        f"--host 127.0.0.1 --port {int(port)}"
    )


def jupyter_install_command(remote_dir: str) -> str:
    """Install JupyterLab into the run venv unless it is importable there already."""
    python = quote_path(venv_python(remote_dir))
    return (
        f"{python} -c 'import jupyterlab' 2>/dev/null || "
        f"{python} -m pip install --disable-pip-version-check {shlex.quote(JUPYTERLAB_SPEC)}"
    )


def jupyter_token_command(remote_dir: str) -> str:
    """Make the token once (readable by the owner only) and print it; a running server keeps it."""
    token = _file(remote_dir, "jupyter", "token")
    return (
        f"mkdir -p {quote_path(service_dir(remote_dir))} && umask 077 && "
        f"{{ [ -s {token} ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {token}; }} && "
        f"cat {token}"
    )


def jupyter_command(remote_dir: str, port: int) -> tuple[str, str]:
    """(command, env prefix): JupyterLab on loopback, the token from the token file (through the
    environment, not the command line that `ps` shows), no port hopping, rooted at the code dir."""
    token = _file(remote_dir, "jupyter", "token")
    command = (
        f"{quote_path(venv_python(remote_dir))} -m jupyterlab --no-browser --ip=127.0.0.1 "
        f"--port={int(port)} --ServerApp.port_retries=0 "
        f"--ServerApp.root_dir={quote_path(code_dir(remote_dir))}"
        # The DLAMI user is ubuntu; an adopted machine may log in as root, where Jupyter refuses
        # to start without this (the server is still loopback-only and token-protected).
        " --allow-root"
    )
    return command, f'JUPYTER_TOKEN="$(cat {token})" '


@dataclass(frozen=True)
class Started:
    port: int
    fresh: bool  # False: it was already running


def _parse_started(text: str, service: str) -> Started:
    words = text.split()
    if len(words) == 2 and words[0] in ("started", "running") and words[1].isdigit():
        return Started(int(words[1]), words[0] == "started")
    raise ToolkitError(
        f"unexpected answer starting {service}: {text.strip()!r}; stop it with "
        f"`fab run-cmd --cmd {shlex.quote(stop_command(service))}` and retry"
    )


def ensure_running(machine: Machine, service: str, command: str, port: int, env: str = "") -> Started:
    """Start the service unless running, and wait until it listens."""
    remote_dir = machine.record.remote_dir
    started = _parse_started(
        machine.run(start_command(remote_dir, service, command, port, env)).stdout, service
    )
    result = machine.run(wait_command(remote_dir, service, started.port), check=False)
    if result.code == 0:
        return started
    tail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
    log = join_path(service_dir(remote_dir), f"{service}.log")
    if result.code == _EXITED:
        raise ToolkitError(f"{service} exited on {machine.name} right after starting: {tail} (log: {log})")
    if result.code == _SLOW:
        raise ToolkitError(
            f"{service} on {machine.name} did not listen on port {started.port} within "
            f"{START_TIMEOUT_S} s: {tail} (log: {log}); stop it with `fab run-cmd --cmd "
            f"{shlex.quote(stop_command(service))}` and retry"
        )
    machine.reach_after_signal_death(result.code)
    raise RemoteCommandFailed(result.code, f"waiting for {service}", result.stderr)


def jupyter_token(machine: Machine) -> str:
    token = machine.run(jupyter_token_command(machine.record.remote_dir)).stdout.strip()
    if not _TOKEN.match(token):
        raise ToolkitError(
            f"could not make a Jupyter token on {machine.name} (got {token[:20]!r}); "
            "check that the remote dir is writable"
        )
    return token
