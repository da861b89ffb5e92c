"""User data: the instance guards its own cost, even if the laptop that launched it is gone.

Two guards, both ending in a shutdown, which terminates the instance because it is launched with
InstanceInitiatedShutdownBehavior=terminate:
- a hard cap: `shutdown -h +N` scheduled at boot for max_hours;
- an idle watch: a systemd timer runs IDLE_SCRIPT every minute; after idle_minutes with no live
  tmux pane (a finished run whose pane stays for inspection does not count, nor do the TensorBoard
  and Jupyter servers of ec2/remote/services.py) and no established SSH connection (an open
  `fab tunnel` is one), it shuts down.

With an `ssh_port` other than 22 the boot script also moves sshd there, the way the image starts
it (see `sshd_port_lines`), and checks with `ss -ltn` that something listens on the port.

The scripts have no test switches: tests run them as they are, in a private mount namespace (so
their writes under /etc, /usr/local and /var land in a temporary folder) with stand-ins for
`shutdown` and `systemctl` first on PATH (tests/ec2/test_userdata.py).
"""

from __future__ import annotations

import math

IDLE_SCRIPT_PATH = "/usr/local/sbin/spotrun-idle-watch"
PORT_CONF = "/etc/ssh/sshd_config.d/60-spotrun-port.conf"
# How long the boot script waits for sshd to listen on a moved port before saying it does not.
PORT_WAIT_S = 60

IDLE_SCRIPT = r"""#!/bin/bash
# spotrun idle watch: shut down after IDLE_MINUTES with no live tmux pane and no SSH connection.
set -u
IDLE_MINUTES=__IDLE_MINUTES__
SSH_PORT=__SSH_PORT__
STATE=/var/lib/spotrun/idle-since
NOW="$(date +%s)"

busy=0
# Established TCP connections to sshd: interactive shells, fab commands, ControlMaster sockets.
if [ -n "$(ss -Htn state established "( sport = :$SSH_PORT )" 2>/dev/null)" ]; then busy=1; fi
# A live pane in any user's tmux server, default or named (-L) socket: a run, or a shell in tmux.
# Servers reached through a tunnel (sessions spotsvc-*: TensorBoard, Jupyter) are not work by
# themselves: the tunnel's SSH connection is, while it is open.
for sock in /tmp/tmux-*/*; do
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
  shutdown -h now "spotrun: idle for ${IDLE_MINUTES} minutes"
fi
"""

_UNITS = """mkdir -p /etc/systemd/system
cat > /etc/systemd/system/spotrun-idle-watch.service <<'UNIT'
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


def sshd_port_lines(ssh_port: int) -> list[str]:
    """Move sshd to `ssh_port` (the AMI's listens on 22 only; the security group opens just
    ssh_port), then wait until something listens there.

    How sshd is started decides how: Ubuntu 24.04 starts it from ssh.socket (socket activation),
    whose port a generator takes from sshd_config at daemon-reload, so the socket is restarted.
    On 22.04 sshd runs as ssh.service and ssh.socket is a legacy unit that conflicts with it and
    listens on 22 whatever sshd_config says: restarting that socket would stop sshd and keep the
    machine on 22, so there the service is restarted instead.
    """
    port = int(ssh_port)
    listening = f'[ -n "$(ss -Hltn "( sport = :{port} )" 2>/dev/null)" ]'
    return [
        f"# sshd on ssh_port={port}.",
        "mkdir -p /etc/ssh/sshd_config.d",
        f"echo 'Port {port}' > {PORT_CONF}",
        "if systemctl is-active --quiet ssh.socket; then",
        "  systemctl daemon-reload",
        "  systemctl restart ssh.socket",
        "else",
        "  systemctl restart ssh.service || systemctl restart sshd.service",
        "fi",
        f"for _ in $(seq {PORT_WAIT_S}); do {listening} && break; sleep 1; done",
        f"if {listening}; then echo 'spotrun: sshd listens on port {port}'; else",
        # cloud-init copies this to the console log (`aws ec2 get-console-output`).
        f"  echo 'spotrun: sshd is not listening on port {port}; the launch will time out' >&2",
        "fi",
    ]


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
        lines += sshd_port_lines(ssh_port)
    if idle_minutes > 0:
        lines += [
            f"# Idle watch: shut down after {idle_minutes} idle minutes.",
            f"mkdir -p {IDLE_SCRIPT_PATH.rsplit('/', 1)[0]}",
            f"cat > {IDLE_SCRIPT_PATH} <<'SPOTRUN_IDLE'",
            idle_script(idle_minutes, ssh_port).rstrip("\n"),
            "SPOTRUN_IDLE",
            f"chmod 755 {IDLE_SCRIPT_PATH}",
            _UNITS.format(script=IDLE_SCRIPT_PATH).rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"
