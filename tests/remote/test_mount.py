"""The workspace mount script through the real sshd, with stand-in disk tools (no block device or
root here): the device is found by the volume id (NVMe by-id link, lsblk serial, Xen name),
formatted only when blank, mounted, and a mounted workspace is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ec2.errors import ToolkitError
from ec2.remote.mount import NO_DEVICE, mount_script, mount_volume
from ec2.remote.ssh import Machine

VOL = "vol-0123456789abcdef0"

# Each stand-in logs its arguments; blkid answers what mkfs wrote; mountpoint answers what mount did.
TOOLS = {
    "sudo": 'exec "$@"\n',
    "blkid": 'echo "blkid $*" >> "$LOG"; cat "$STATE/fs" 2>/dev/null\n',
    "mkfs.ext4": 'echo "mkfs.ext4 $*" >> "$LOG"; echo ext4 > "$STATE/fs"\n',
    "mount": 'echo "mount $*" >> "$LOG"; touch "$STATE/mounted"\n',
    "mountpoint": '[ -e "$STATE/mounted" ]\n',
    "lsblk": 'cat "$STATE/lsblk" 2>/dev/null\n',
}


@pytest.fixture
def disk(sshd):
    """Stand-in tools on the sshd's PATH, a fake /dev, and a state folder they share."""
    state = sshd.root / "disk"
    state.mkdir()
    for name, body in TOOLS.items():
        tool = sshd.bin_dir / name
        tool.write_text(f"#!/bin/bash\nLOG={state}/log\nSTATE={state}\n{body}")
        tool.chmod(0o755)
    dev = sshd.root / "dev"
    (dev / "disk" / "by-id").mkdir(parents=True)
    (dev / "nvme1n1").write_text("")
    return state, dev


def run_script(machine: Machine, dev: Path, mount: str):
    return machine.run(mount_script(VOL, mount, dev_root=str(dev)), check=False, timeout=120)


def test_blank_volume_is_formatted_then_mounted_and_a_reattach_keeps_its_files(sshd, disk):
    state, dev = disk
    (dev / "disk" / "by-id" / f"nvme-Amazon_Elastic_Block_Store_{VOL.replace('-', '')}").symlink_to(
        dev / "nvme1n1"
    )
    m = Machine(sshd.record(name="box"))
    mount = str(sshd.root / "work")
    first = run_script(m, dev, mount)
    assert first.code == 0, first.stderr
    assert f"formatting {dev}/nvme1n1 (blank) as ext4" in first.stdout
    log = (state / "log").read_text().splitlines()
    assert log == [
        f"blkid -p -o value -s TYPE {dev}/nvme1n1",
        f"mkfs.ext4 -q -L spotrun-work {dev}/nvme1n1",
        f"mount {dev}/nvme1n1 {mount}",
    ]
    assert Path(mount).is_dir()

    # Mounted already: nothing is run.
    assert run_script(m, dev, mount).stdout.strip() == f"already mounted at {mount}"
    # The next instance: the same volume, not mounted yet, has a filesystem: no mkfs.
    (state / "mounted").unlink()
    (state / "log").unlink()
    assert run_script(m, dev, mount).code == 0
    assert [line.split()[0] for line in (state / "log").read_text().splitlines()] == ["blkid", "mount"]


def test_device_found_by_serial_when_udev_made_no_link(sshd, disk):
    state, dev = disk
    (state / "lsblk").write_text(f"nvme0n1 vol0aaaaaaaaaaaaaaaa\nnvme1n1 {VOL.replace('-', '')}\n")
    m = Machine(sshd.record(name="box"))
    result = run_script(m, dev, str(sshd.root / "work"))
    assert result.code == 0, result.stderr
    assert f"mounted {dev}/nvme1n1 at" in result.stdout


def test_xen_device_name():
    dev = "/dev"
    script = mount_script(VOL, "~/work", dev_root=str(dev))
    assert f"if [ -b {dev}/xvdf ]; then DEV={dev}/xvdf" in script
    assert 'MNT="$HOME"/work' in script


def test_no_device_is_one_line(sshd, disk, monkeypatch):
    state, dev = disk
    m = Machine(sshd.record(name="box"))
    # The 60-second wait, shortened: the script with a one-round loop.
    monkeypatch.setattr(
        "ec2.remote.mount.mount_script",
        lambda v, mnt: mount_script(v, mnt, dev_root=str(dev)).replace("seq 60", "seq 1"),
    )
    with pytest.raises(ToolkitError) as err:
        mount_volume(m, VOL, str(sshd.root / "work"))
    assert f"volume {VOL} is attached but box shows no device for it" in str(err.value)
    assert NO_DEVICE == 20
