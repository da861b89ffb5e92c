"""User data: the instance guards its own cost, even if the laptop that launched it is gone.

Two guards, both ending in a shutdown, which terminates the instance because it is launched with
InstanceInitiatedShutdownBehavior=terminate:
- a hard cap: `shutdown -h +N` scheduled at boot for max_hours;
- an idle watch: a systemd timer runs IDLE_SCRIPT every minute; after idle_minutes with no live
  tmux pane (a finished run whose pane stays for inspection does not count) and no established
  SSH connection, it shuts down.
"""

from __future__ import annotations

import math

IDLE_SCRIPT_PATH = "/usr/local/sbin/spotrun-idle-watch"

# Overridable through the environment so a test can run it with stand-in tools and state folder.
IDLE_SCRIPT = r"""#!/bin/bash
# spotrun idle watch: shut down after IDLE_MINUTES with no live tmux pane and no SSH connection.
set -u
IDLE_MINUTES="${SPOTRUN_IDLE_MINUTES:-__IDLE_MINUTES__}"
SSH_PORT="${SPOTRUN_SSH_PORT:-__SSH_PORT__}"
STATE="${SPOTRUN_IDLE_STATE:-/var/lib/spotrun/idle-since}"
SHUTDOWN="${SPOTRUN_SHUTDOWN:-/sbin/shutdown -h now spotrun-idle}"
NOW="${SPOTRUN_NOW:-$(date +%s)}"

busy=0
# Established TCP connections to sshd: interactive shells, fab commands, ControlMaster sockets.
if [ -n "$(ss -Htn state established "( sport = :$SSH_PORT )" 2>/dev/null)" ]; then busy=1; fi
# A live pane in any user's tmux server (a run, or an interactive shell in tmux).
for sock in /tmp/tmux-*/default ${SPOTRUN_TMUX_SOCKETS:-}; do
  [ -S "$sock" ] || continue
  if tmux -S "$sock" list-panes -a -F '#{pane_dead}' 2>/dev/null | grep -qx 0; then busy=1; fi
done

mkdir -p "$(dirname "$STATE")"
if [ "$busy" = 1 ]; then rm -f "$STATE"; exit 0; fi
if [ ! -f "$STATE" ]; then echo "$NOW" > "$STATE"; exit 0; fi
since="$(cat "$STATE")"
if [ $(( NOW - since )) -ge $(( IDLE_MINUTES * 60 )) ]; then
  logger -t spotrun "idle for ${IDLE_MINUTES} minutes: shutting down" 2>/dev/null || true
  $SHUTDOWN
fi
"""

_UNITS = """cat > /etc/systemd/system/spotrun-idle-watch.service <<'UNIT'
[Unit]
Description=spotrun idle watch
[Service]
Type=oneshot
ExecStart={script}
UNIT
cat > /etc/systemd/system/spotrun-idle-watch.timer <<'UNIT'
[Unit]
Description=spotrun idle watch, every minute
[Timer]
OnBootSec=5min
OnUnitActiveSec=1min
[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload
systemctl enable --now spotrun-idle-watch.timer
"""


def idle_script(idle_minutes: int, ssh_port: int = 22) -> str:
    # The SSH port matters: a watch that looked at :22 while sshd listens elsewhere would see no
    # session and shut down a machine someone is working on.
    return IDLE_SCRIPT.replace("__IDLE_MINUTES__", str(int(idle_minutes))).replace(
        "__SSH_PORT__", str(int(ssh_port))
    )


def build_user_data(max_hours: float, idle_minutes: int, ssh_port: int = 22) -> str:
    """The boot script (cloud-init runs it once, as root)."""
    minutes = max(1, math.ceil(max_hours * 60))
    lines = [
        "#!/bin/bash",
        "# spotrun: the instance guards its own cost (shutdown terminates it).",
        f"# Hard cap: max_hours={max_hours:g}.",
        f"shutdown -h +{minutes} 'spotrun: max_hours reached'",
    ]
    if ssh_port != 22:
        # The AMI's sshd listens on 22 only; the security group opens just ssh_port. Ubuntu 24.04
        # starts sshd from ssh.socket, whose port a generator takes from sshd_config at daemon-reload.
        lines += [
            f"# sshd on ssh_port={ssh_port}.",
            f"echo 'Port {int(ssh_port)}' > /etc/ssh/sshd_config.d/60-spotrun-port.conf",
            "systemctl daemon-reload",
            "systemctl restart ssh.socket 2>/dev/null || systemctl restart ssh || systemctl restart sshd",
        ]
    if idle_minutes > 0:
        lines += [
            f"# Idle watch: shut down after {idle_minutes} idle minutes.",
            f"cat > {IDLE_SCRIPT_PATH} <<'SPOTRUN_IDLE'",
            idle_script(idle_minutes, ssh_port).rstrip("\n"),
            "SPOTRUN_IDLE",
            f"chmod 755 {IDLE_SCRIPT_PATH}",
            _UNITS.format(script=IDLE_SCRIPT_PATH).rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


# The Python that runs the boot before the run's venv exists: the AMI's PyTorch environment
# (boto3 is part of it), else the system's. The same order as scripts/setup_instance.sh.
BOOT_PYTHONS = "/opt/pytorch/bin/python3 /opt/conda/envs/pytorch/bin/python3 python3"


def boot_lines(root: str, bundle_uri: str, remote_dir: str, login_user: str) -> list[str]:
    """A detached run's boot: fetch the code bundle with the instance role, unpack it as the login
    user into REMOTE_DIR/code (where `fab sync` puts it), and start ec2.remote.boot as its own
    systemd unit (cloud-init finishes; `journalctl -u spotrun-boot` shows it)."""
    import shlex

    from ec2.remote.runs import code_dir
    from ec2.remote.ssh import quote_path

    user = shlex.quote(login_user)
    code = quote_path(code_dir(remote_dir))
    return [
        "# spotrun detached run: the boot starts (or resumes) the run from S3 (ec2/remote/boot.py).",
        f"CODE=$(runuser -u {user} -- bash -c {shlex.quote(f'mkdir -p {code} && cd {code} && pwd')})",
        f"aws s3 cp --only-show-errors {shlex.quote(bundle_uri)} /tmp/spotrun-bundle.tar.gz",
        f'runuser -u {user} -- tar -xzf /tmp/spotrun-bundle.tar.gz -C "$CODE"',
        f"for PY in {BOOT_PYTHONS}; do command -v $PY >/dev/null && break; done",
        f'systemd-run --unit=spotrun-boot --collect --working-directory="$CODE" "$(command -v $PY)" '
        f"-m ec2.remote.boot --root {shlex.quote(root)}",
    ]


def build_detached_user_data(
    max_hours: float,
    idle_minutes: int,
    ssh_port: int,
    *,
    root: str,
    bundle_uri: str,
    remote_dir: str,
    login_user: str,
) -> str:
    """The cost guards of every instance (the boot then moves the hard cap to the run's time
    left), then the boot."""
    return (
        build_user_data(max_hours, idle_minutes, ssh_port)
        + "\n".join(boot_lines(root, bundle_uri, remote_dir, login_user))
        + "\n"
    )
