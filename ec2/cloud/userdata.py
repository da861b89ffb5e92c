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
`shutdown` and `systemctl` first on PATH (tests/cloud/test_userdata.py).
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


# The Python that runs the boot before the run's venv exists: the AMI's PyTorch environment,
# else the system's (the same order as scripts/setup_instance.sh).
BOOT_PYTHONS = "/opt/pytorch/bin/python3 /opt/conda/envs/pytorch/bin/python3 python3"
BOOT_DEPS = "/opt/spotrun-boot"
GIVEUP_PATH = "/usr/local/sbin/spotrun-giveup"
BUNDLE_PATH = "/tmp/spotrun-bundle.tar.gz"

# The bundle, fetched with the boot's Python and boto3 through the instance role: not `aws s3 cp`,
# since the PyTorch DLAMIs' release notes list awscli inside the /opt/pytorch environment and do
# not document a system-wide `aws` on root's PATH under cloud-init. A refusal exits with one line.
FETCH = """import sys, boto3
bucket, _, key = sys.argv[1][len("s3://"):].partition("/")
try:
    body = boto3.client("s3", region_name=sys.argv[3]).get_object(Bucket=bucket, Key=key)["Body"].read()
except Exception as e:
    sys.exit(f"{type(e).__name__}: {e}")
open(sys.argv[2], "wb").write(body)
"""


# EC2 takes at most 16 KB of user data before base64
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html).
USER_DATA_MAX = 16 * 1024


def _giveup_source() -> str:
    """ec2/remote/giveup.py as the user data carries it: the same code, its docstrings and
    comments left out (they would take half of the 16 KB)."""
    import ast
    from pathlib import Path

    from ec2.remote import giveup

    tree = ast.parse(Path(giveup.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                node.body = node.body[1:] or [ast.Pass()]
    return f"# ec2/remote/giveup.py (docstrings left out)\n{ast.unparse(tree)}\n"


def boot_lines(
    root: str,
    bundle_uri: str,
    remote_dir: str,
    login_user: str,
    *,
    group: str,
    region: str,
    node: int | None = None,
) -> list[str]:
    """A detached run's boot: fetch the code bundle with the instance role, unpack it as the login
    user into REMOTE_DIR/code (where `fab sync` puts it), and start ec2.remote.boot as its own
    systemd unit (cloud-init finishes; `journalctl -u spotrun-boot` shows it).

    Any step that fails gives up (ec2/remote/giveup.py, written out here, standard library only):
    the group's desired capacity goes to 0 and the cause onto the group's tag, so a boot that
    cannot even read the run's record (where max_recoveries lives) does not relaunch for ever."""
    import shlex

    from ec2.remote.runs import code_dir
    from ec2.remote.ssh import quote_path

    user = shlex.quote(login_user)
    code = quote_path(code_dir(remote_dir))
    bundle = shlex.quote(bundle_uri)
    last = '"$(printf %s "$WHY" | tail -n 3)"'
    # One member of a detached cluster (`--detach --nodes N`): its node number is its group's.
    boot = "ec2.remote.boot" if node is None else f"ec2.remote.boot_nodes --node {int(node)}"
    return [
        "# spotrun detached run: the boot starts (or resumes) the run from S3 (ec2/remote/boot.py).",
        f"mkdir -p {GIVEUP_PATH.rsplit('/', 1)[0]}",
        f"cat > {GIVEUP_PATH} <<'SPOTRUN_GIVEUP'",
        _giveup_source().rstrip("\n"),
        "SPOTRUN_GIVEUP",
        f"chmod 755 {GIVEUP_PATH}",
        # Stop the group (desired 0, the cause on its tag), then this instance.
        f"give_up() {{ python3 {GIVEUP_PATH} --group {shlex.quote(group)} --region {shlex.quote(region)} "
        "\"$@\"; shutdown -h now 'spotrun: boot failed'; exit 1; }",
        f"CODE=$(runuser -u {user} -- bash -c {shlex.quote(f'mkdir -p {code} && cd {code} && pwd')}) || "
        f"give_up 'could not make the code folder {code} as {login_user}'",
        # The boot needs boto3 before the run's venv exists: the first AMI Python that has it,
        # else boto3 installed beside the system's (never into the AMI's environment).
        f"for PY in {BOOT_PYTHONS}; do "
        f"command -v $PY >/dev/null && $PY -c 'import boto3' 2>/dev/null && break; done",
        f"$PY -c 'import boto3' 2>/dev/null || {{ PY=python3; "
        f"WHY=$($PY -m pip install -q --target {BOOT_DEPS} boto3 2>&1) || "
        f"give_up 'installing boto3 for the boot failed:' {last}; }}",
        f"WHY=$(PYTHONPATH={BOOT_DEPS} $PY -c {shlex.quote(FETCH)} {bundle} {BUNDLE_PATH} "
        f"{shlex.quote(region)} 2>&1) || give_up 'fetching the code bundle {bundle_uri} failed:' {last}",
        f'WHY=$(runuser -u {user} -- tar -xzf {BUNDLE_PATH} -C "$CODE" 2>&1) || '
        f"give_up 'the code bundle {bundle_uri} does not unpack (corrupt?):' {last}",
        f'systemd-run --unit=spotrun-boot --collect --working-directory="$CODE" '
        f'--setenv=PYTHONPATH={BOOT_DEPS} "$(command -v $PY)" -m {boot} --root {shlex.quote(root)} '
        f"--group {shlex.quote(group)} || give_up 'starting the boot (systemd-run spotrun-boot) failed'",
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
    group: str,
    region: str,
    node: int | None = None,
) -> str:
    """The cost guards of every instance (the boot then moves the hard cap to the run's time
    left), then the boot."""
    boot = boot_lines(root, bundle_uri, remote_dir, login_user, group=group, region=region, node=node)
    text = build_user_data(max_hours, idle_minutes, ssh_port) + "\n".join(boot) + "\n"
    if len(text.encode()) > USER_DATA_MAX:
        raise ValueError(f"user data of {len(text.encode())} bytes is over EC2's {USER_DATA_MAX}")
    return text
