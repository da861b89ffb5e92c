"""Interactive work on a machine through local port forwarding: tunnel, tensorboard, jupyter.

Each holds the tunnel open in the foreground and prints the local URL; Ctrl-C closes the tunnel
(the servers on the machine keep running, in their own tmux sessions).
"""

from __future__ import annotations

import sys

from invoke import task

from common.errors import ToolkitError
from ec2.remote import services
from ec2.remote.ssh import Machine
from ec2.remote.sync import remote_output_dir
from ec2.remote.tunnel import Forward, Tunnel, TunnelError, busy_message, local_port_busy, plan_forwards
from tasks.edge import edge
from tasks.remote import _machine, _reached


def _note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr, flush=True)


def hold(m: Machine, forwards: list[Forward], urls: list[str]) -> None:
    """Open the forwards, print where to point the browser, wait for Ctrl-C, close."""
    with Tunnel(m.record, forwards, note=_note) as tunnel:
        try:  # from the first URL on: a Ctrl-C as soon as it shows is a close, not an interruption
            for f, url in zip(forwards, urls, strict=True):
                print(f"{url}  ->  {m.name}:{f.remote_port}", flush=True)
            print("tunnel open; Ctrl-C closes it", file=sys.stderr, flush=True)
            tunnel.wait()
        except KeyboardInterrupt:
            pass
    print("tunnel closed", file=sys.stderr)


def _one_forward(port, local_port) -> Forward:
    return plan_forwards([port], [local_port] if local_port else [])[0]


def _check_free(forward: Forward) -> None:
    """Before starting a server: a busy local port would only fail after it."""
    if local_port_busy(forward.local_port):
        raise TunnelError(busy_message(forward.local_port))


@task(iterable=["port", "local_port", "set_"])
@edge
def tunnel(c, name=None, port=None, local_port=None, config=None, set_=None):
    """Forward local ports to the machine's loopback (--port P, repeatable; --local-port L)."""
    forwards = plan_forwards(port or [], local_port or [])
    m = _reached(_machine(name, config, set_))
    hold(m, forwards, [f.url for f in forwards])


@task(iterable=["set_"])
@edge
def tensorboard(
    c,
    name=None,
    run="train",
    logdir=None,
    port=services.TENSORBOARD_PORT,
    local_port=None,
    config=None,
    set_=None,
):
    """Start TensorBoard on the run's output folder (unless running) and forward it (--run, --logdir)."""
    forward = _one_forward(port, local_port)
    _check_free(forward)
    m = _reached(_machine(name, config, set_))
    logdir = logdir or remote_output_dir(m, run)
    if not logdir:
        raise ToolkitError(
            f"run {run!r} on {m.name} has no output folder recorded (not started by `fab train`, or "
            "started with --cmd); pass --logdir PATH (relative to the code folder, or absolute)"
        )
    if logdir.startswith("s3://"):
        raise ToolkitError(
            f"run {run!r} writes to {logdir}; pass --logdir with a folder on the machine "
            "(TensorBoard on the instance reads local event files)"
        )
    command = services.tensorboard_command(m.record.remote_dir, logdir, forward.remote_port)
    started = services.ensure_running(m, "tensorboard", command, forward.remote_port)
    print(f"TensorBoard {'started' if started.fresh else 'already running'} on {m.name} ({logdir})")
    forward = Forward(forward.local_port, started.port)
    hold(m, [forward], [forward.url])


@task(iterable=["set_"])
@edge
def jupyter(c, name=None, port=services.JUPYTER_PORT, local_port=None, config=None, set_=None):
    """Start JupyterLab in the code folder with the run venv (installs it on first use) and forward it."""
    forward = _one_forward(port, local_port)
    _check_free(forward)
    m = _reached(_machine(name, config, set_))
    remote_dir = m.record.remote_dir
    code = m.stream(services.jupyter_install_command(remote_dir))
    if code:
        raise ToolkitError(
            f"installing {services.JUPYTERLAB_SPEC} into the venv on {m.name} failed (exit {code}); "
            "see the lines above; run `fab setup` first if the venv is missing"
        )
    token = services.jupyter_token(m)
    command, env = services.jupyter_command(remote_dir, forward.remote_port)
    started = services.ensure_running(m, "jupyter", command, forward.remote_port, env)
    print(f"JupyterLab {'started' if started.fresh else 'already running'} on {m.name}")
    forward = Forward(forward.local_port, started.port)
    hold(m, [forward], [f"{forward.url}lab?token={token}"])
