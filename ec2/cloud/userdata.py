"""User data: the instance guards its own cost, even if the laptop that launched it is gone.

Two guards, both ending in a shutdown, which terminates the instance because it is launched with
InstanceInitiatedShutdownBehavior=terminate:
- a hard cap: `shutdown -h +N` scheduled at boot for max_hours;
- an idle watch: a systemd timer runs IDLE_SCRIPT every minute; after idle_minutes with no live
  tmux pane (a finished run whose pane stays for inspection does not count, nor do the TensorBoard
  and Jupyter servers of ec2/remote/services.py) and no established SSH connection (an open
  `fab tunnel` is one), it shuts down.
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
# A live pane in any user's tmux server (a run, or an interactive shell in tmux). Servers reached
# through a tunnel (sessions spotsvc-*: TensorBoard, Jupyter) are not work by themselves: the
# tunnel's SSH connection is, while it is open.
for sock in /tmp/tmux-*/default ${SPOTRUN_TMUX_SOCKETS:-}; do
  [ -S "$sock" ] || continue
  if tmux -S "$sock" list-panes -a -F '#{pane_dead} #{session_name}' 2>/dev/null \
    | grep -v '^[01] spotsvc-' | grep -q '^0 '; then busy=1; fi
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
