"""Mount the workspace volume on the machine, over SSH, after launch attached it.

Which block device is the volume: on Nitro instances (all current GPU types) EBS volumes are NVMe
devices whose serial number is the volume id without its dash ("vol0123..."), and udev links them
as /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123...; the device name given to
AttachVolume (/dev/sdf) is not used. On older Xen types the device is /dev/xvdf (the attach name
with sd -> xvd). The script tries the by-id link, then the serial through lsblk, then /dev/xvdf,
for up to a minute while the kernel and udev catch up.

It formats (ext4) only a device with no filesystem signature (blkid finds none): a reattached
volume keeps its files. Mounting an already mounted workspace is a no-op. The mount point is
owned by the login user.
"""

from __future__ import annotations

import shlex

from ec2.errors import RemoteCommandFailed, ToolkitError
from ec2.remote.ssh import Machine, quote_path

NVME_MODEL = "Amazon_Elastic_Block_Store"
# Exit codes of the script (never 255: that is ssh's connection error).
NO_DEVICE = 20
MOUNT_FAILED = 21


def mount_script(volume_id: str, mount: str, attach_device: str = "/dev/sdf", dev_root: str = "/dev") -> str:
    """The remote shell script, as a string (tests run it with stand-in tools and a fake /dev)."""
    serial = volume_id.replace("-", "")
    xen = attach_device.replace("/dev/sd", f"{dev_root}/xvd", 1)
    return "\n".join(
        [
            "set -u",
            f"MNT={quote_path(mount)}",
            'if mountpoint -q "$MNT"; then echo "already mounted at $MNT"; exit 0; fi',
            "DEV=",
            "for i in $(seq 60); do",
            f"  link={shlex.quote(f'{dev_root}/disk/by-id/nvme-{NVME_MODEL}_{serial}')}",
            '  if [ -e "$link" ]; then DEV=$(readlink -f "$link"); break; fi',
            f"  name=$(lsblk -dn -o NAME,SERIAL 2>/dev/null | awk '$2 == \"{serial}\" {{print $1; exit}}')",
            f'  if [ -n "$name" ]; then DEV={shlex.quote(dev_root)}/$name; break; fi',
            f"  if [ -b {shlex.quote(xen)} ]; then DEV={shlex.quote(xen)}; break; fi",
            "  sleep 1",
            "done",
            f'if [ -z "$DEV" ]; then echo "no block device for {volume_id} after 60 s" >&2; '
            f"exit {NO_DEVICE}; fi",
            # blkid -p probes the device itself; no output means no filesystem (a blank volume).
            'if [ -z "$(sudo blkid -p -o value -s TYPE "$DEV" 2>/dev/null)" ]; then',
            '  echo "formatting $DEV (blank) as ext4"',
            f'  sudo mkfs.ext4 -q -L spotrun-work "$DEV" || exit {MOUNT_FAILED}',
            "fi",
            f'sudo mkdir -p "$MNT" && sudo mount "$DEV" "$MNT" || exit {MOUNT_FAILED}',
            'sudo chown "$(id -u):$(id -g)" "$MNT"',
            'echo "mounted $DEV at $MNT"',
        ]
    )


def mount_volume(machine: Machine, volume_id: str, mount: str) -> str:
    """Mount it (formatting a blank volume); returns the script's last line for the user."""
    result = machine.run(mount_script(volume_id, mount), check=False, timeout=180)
    if result.code == 0:
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else f"mounted at {mount}"
    if result.code == NO_DEVICE:
        raise ToolkitError(
            f"volume {volume_id} is attached but {machine.name} shows no device for it; check `lsblk` "
            f"with `fab ssh`, then `fab volume-mount --name {machine.name}`"
        )
    machine.reach_after_signal_death(result.code)
    raise RemoteCommandFailed(result.code, f"mounting {volume_id} at {mount}", result.stderr)


def check_mounted_command(mount: str) -> str:
    return f"mountpoint -q {quote_path(mount)}"
