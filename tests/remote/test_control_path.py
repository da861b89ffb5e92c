"""SSH control sockets under a long home folder: the socket path must fit macOS's 104-byte
sun_path (Linux allows 108), counting the temporary name ssh binds first ("<path>.<16 chars>").

macOS cannot run here, so the limit is checked on the path ssh itself computes (`ssh -G` expands
%C), and a real ControlMaster is started under a home long enough to break Linux's larger limit.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from ec2 import paths
from ec2.errors import ToolkitError
from ec2.registry import MachineRecord
from ec2.remote.ssh import Machine, prepare_local, ssh_options

MACOS_SUN_PATH = 104
LINUX_SUN_PATH = 108
# "." plus 16 random characters: the name ssh binds before renaming the socket into place.
TEMP_SUFFIX = 17

RECORD = MachineRecord(name="exp1", host="203.0.113.7", port=2222, user="ubuntu", key_path="/k/spotrun.pem")


def _control_path_as_ssh_sees_it(record: MachineRecord) -> str:
    """ssh's own expansion of our ControlPath (%C → its hash), from `ssh -G`."""
    out = subprocess.run(
        ["ssh", "-G", *ssh_options(record), record.host],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("controlpath "))


@pytest.mark.parametrize("home_len", [20, 60, 120, 300])
def test_control_socket_fits_macos_under_any_home(monkeypatch, home_len):
    home = "/Users/" + "h" * (home_len - len("/Users/"))
    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("SPOTRUN_HOME", raising=False)
    path = _control_path_as_ssh_sees_it(RECORD)
    assert "%" not in path and len(os.fsencode(path)) + TEMP_SUFFIX < MACOS_SUN_PATH
    if home_len <= 20:
        # A usual home keeps the sockets with spotrun's other files.
        assert path.startswith(f"{home}/.spotrun/cm/")
    else:
        assert path.startswith(f"/tmp/spotrun-{os.getuid()}-")


def test_the_fallback_folder_is_stable_and_per_spotrun_home(monkeypatch):
    monkeypatch.setenv("SPOTRUN_HOME", "/Users/" + "a" * 80)
    first = paths.control_dir()
    assert paths.control_dir() == first  # the next command finds the same master
    monkeypatch.setenv("SPOTRUN_HOME", "/Users/" + "b" * 80)
    assert paths.control_dir() != first


def test_a_long_home_still_gets_a_working_control_master(sshd, monkeypatch):
    """Real ssh and sshd, HOME 90 bytes long: `<home>/.spotrun/cm/<40>` plus the temporary suffix
    would be past even Linux's limit, and ssh would stop ("too long for Unix domain socket")."""
    long_home = Path(os.environ["HOME"]) / ("x" * (90 - len(os.environ["HOME"]) - 1))
    long_home.mkdir()
    monkeypatch.setenv("HOME", str(long_home))
    monkeypatch.delenv("SPOTRUN_HOME")
    assert len(str(long_home / ".spotrun" / "cm")) + 1 + 40 + TEMP_SUFFIX >= LINUX_SUN_PATH

    machine = Machine(sshd.record(), attempts=1)
    try:
        assert machine.run("echo hello").stdout == "hello\n"
        sockets = list(paths.control_dir().iterdir())
        assert len(sockets) == 1 and stat.S_ISSOCK(sockets[0].stat().st_mode)
        assert machine.run("echo again").stdout == "again\n"  # through the master
        check = subprocess.run(
            ["ssh", *ssh_options(machine.record), "-O", "check", machine.record.host],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
    finally:
        from ec2.remote.ssh import close_masters

        close_masters()
        subprocess.run(["rm", "-rf", str(paths.control_dir())])


@pytest.fixture
def short_tmp():
    """A folder short enough that the control sockets stay under it."""
    root = Path(tempfile.mkdtemp(prefix="srcp", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_control_folder_that_is_not_ours_is_refused(short_tmp, monkeypatch):
    tmp_path = short_tmp
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / "s"))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "cm").symlink_to(target)  # e.g. planted in a shared /tmp
    with pytest.raises(ToolkitError, match=r"not a folder of yours; remove it"):
        prepare_local(RECORD)


def test_a_control_folder_open_to_others_is_made_private(short_tmp, monkeypatch):
    tmp_path = short_tmp
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / "s"))
    (tmp_path / "s" / "cm").mkdir(parents=True, mode=0o755)
    (tmp_path / "s" / "cm").chmod(0o755)
    prepare_local(RECORD)
    assert paths.control_dir() == tmp_path / "s" / "cm"
    assert stat.S_IMODE((tmp_path / "s" / "cm").stat().st_mode) == 0o700
