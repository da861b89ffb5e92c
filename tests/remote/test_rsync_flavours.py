"""fab sync and fab download with the rsyncs a Mac has: rsync 2.6.9 (macOS up to 14) and openrsync
(macOS 15+), as stand-ins first on PATH (tests/peers/fake_rsync.py: their `--version`, their
option tables, the real transfer), and this machine's real rsync 3.x; a real sshd on the other end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ec2.errors import ToolkitError
from ec2.registry import MachineRecord
from ec2.remote import runs
from ec2.remote.rsync_version import UPGRADE, doctor_check, local_rsync, parse_version
from ec2.remote.ssh import Machine
from ec2.remote.sync import download_outputs, sync_argv, sync_code
from tests.peers import fake_rsync


@pytest.fixture
def machine(sshd):
    return Machine(sshd.record(), attempts=1)


def _use(flavour: str, folder: Path, monkeypatch) -> Path:
    """The stand-in first on the laptop's PATH. Only the laptop's: sshd was started before (its
    sessions keep the PATH it had), so the other end runs the real rsync, as an instance does."""
    fake_rsync.install(folder, flavour, sys.executable)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return folder


def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("print('a')\n")
    (root / "pkg" / "b.py").write_text("print('b')\n")
    (root / "big.bin").write_bytes(b"0" * 1000)
    (root / ".gitignore").write_text("*.bin\n")
    (root / ".env").write_text("secret\n")
    return root


def _remote_files(machine: Machine) -> list[str]:
    code = runs.code_dir(machine.record.remote_dir)
    return machine.run(f"cd {code} && find . -type f -not -path './out/*' | sort").stdout.split()


def _options(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


@pytest.mark.parametrize("flavour, itemize", [("real", True), ("rsync-2.6.9", True), ("openrsync", False)])
def test_sync_and_download_work_with_each_rsync(machine, tmp_path, monkeypatch, flavour, itemize):
    fake = _use(flavour, tmp_path / "bin", monkeypatch) if flavour != "real" else None
    tree = _tree(tmp_path / "proj")
    code = runs.code_dir(machine.record.remote_dir)
    machine.run(f"mkdir -p {code}/out && echo keep > {code}/out/last.pt && echo old > {code}/stale.py")

    first = sync_code(machine, tree, protect=("out",))
    # Ignored and secret files stay home; --delete removes what the laptop lacks, sparing out/.
    assert _remote_files(machine) == ["./.gitignore", "./pkg/a.py", "./pkg/b.py"]
    assert machine.run(f"cat {code}/out/last.pt").stdout == "keep\n"
    assert first.files_transferred == 3 and first.bytes_sent > 0
    (tree / "pkg" / "a.py").write_text("print('changed')\n")
    assert sync_code(machine, tree, protect=("out",)).files_transferred == 1
    assert (first.itemized != []) is itemize

    rdir = runs.run_dir(machine.record.remote_dir, "train")
    machine.run(f"mkdir -p {code}/out2 {rdir} && echo w > {code}/out2/m.csv && echo 0 > {rdir}/exit_code")
    stats = download_outputs(machine, "train", tmp_path / "dl", output_dir=f"{code}/out2")
    assert (tmp_path / "dl" / "m.csv").read_text() == "w\n" and stats["outputs"].files_transferred == 1
    assert (tmp_path / "dl" / "run" / "exit_code").read_text() == "0\n"

    if fake is None:
        return
    transfers = [argv for argv in fake_rsync.calls(fake) if "--version" not in argv]
    assert len(transfers) == 4  # 2 syncs, 2 downloads (outputs, run dir); none refused by the stand-in
    for argv in transfers:
        opts = _options(argv)
        assert "--info" not in opts and ("--itemize-changes" in opts) is itemize
        assert "--partial-dir" in opts and "--stats" in opts
    assert "--delete" in _options(transfers[0]) and "--filter" in _options(transfers[0])
    assert not any("--server" in argv for argv in transfers)  # the other end was the real rsync
    # The version is asked once, however many transfers follow.
    assert [argv for argv in fake_rsync.calls(fake) if "--version" in argv] == [["--version"]]


@pytest.mark.parametrize("flavour", ["rsync-2.6.9", "openrsync"])
def test_at_a_terminal_an_old_rsync_gets_per_file_progress(machine, tmp_path, monkeypatch, flavour):
    _use(flavour, tmp_path / "bin", monkeypatch)
    argv = sync_argv(machine, tmp_path, tty=True)
    assert "--progress" in argv and "--info=progress2" not in argv


def test_at_a_terminal_rsync_3_shows_one_progress_line(machine, tmp_path):
    assert local_rsync().modern, "this machine's rsync is 3.1+"
    argv = sync_argv(machine, tmp_path, tty=True)
    assert "--info=progress2" in argv and "--progress" not in argv


@pytest.mark.parametrize("flavour", ["rsync-2.6.3", "openrsync-openbsd", "mystery"])
def test_an_rsync_that_cannot_sync_correctly_stops_before_syncing(machine, tmp_path, monkeypatch, flavour):
    fake = _use(flavour, tmp_path / "bin", monkeypatch)
    with pytest.raises(ToolkitError, match=r"rsync 3.1\+ needed: `brew install rsync` \(found "):
        sync_code(machine, _tree(tmp_path / "proj"))
    assert fake_rsync.calls(fake) == [["--version"]]  # nothing was transferred
    assert machine.run(f"test -e {runs.code_dir(machine.record.remote_dir)}", check=False).code != 0


def test_no_rsync_at_all_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / "s"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no rsync (and no ssh: nothing is reached)
    machine = Machine(MachineRecord(name="x", host="203.0.113.7", port=22, user="u", key_path="/k"))
    with pytest.raises(ToolkitError, match="rsync not found on this computer: `brew install rsync` on macOS"):
        sync_code(machine, _tree(tmp_path / "proj"))


# What the real programs print for --version (sources above; the first is this machine's style).
VERSIONS = {
    "rsync  version 3.2.7  protocol version 32\nCopyright (C) 1996-2022": ("rsync", (3, 2, 7), 32, True),
    "rsync  version v3.3.0  protocol version 32\n": ("rsync", (3, 3, 0), 32, True),
    "rsync  version 2.6.9  protocol version 29\nCopyright (C) 1996-2006": ("rsync", (2, 6, 9), 29, True),
    "openrsync: protocol version 29\nrsync version 2.6.9 compatible\n": ("openrsync", (2, 6, 9), 29, True),
    "openrsync: protocol version 27\n": ("openrsync", (), 27, False),
    "rsync  version 2.6.3  protocol version 28\n": ("rsync", (2, 6, 3), 28, False),
    "": ("unknown", (), None, False),
}


@pytest.mark.parametrize("text", list(VERSIONS))
def test_version_lines_are_read(text):
    info = parse_version(text, "/usr/bin/rsync")
    assert (info.flavour, info.version, info.protocol, info.usable) == VERSIONS[text]


def test_this_machines_rsync_is_read():
    info = local_rsync()
    assert info.flavour == "rsync" and info.version >= (3, 1) and info.path


@pytest.mark.parametrize(
    "flavour, ok, described, fix",
    [
        ("real", True, "rsync 3.", ""),
        ("rsync-2.6.9", True, "rsync 2.6.9, protocol 29 at ", f"for more, {UPGRADE}"),
        ("openrsync", True, "openrsync (rsync 2.6.9 compatible, protocol 29) at ", f"for more, {UPGRADE}"),
        ("rsync-2.6.3", False, "rsync 2.6.3, protocol 28 at ", UPGRADE),
        ("openrsync-openbsd", False, "openrsync (no rsync version claimed, protocol 27) at ", UPGRADE),
    ],
)
def test_doctor_row(tmp_path, monkeypatch, flavour, ok, described, fix):
    if flavour != "real":
        _use(flavour, tmp_path / "bin", monkeypatch)
    got_ok, description, got_fix = doctor_check()
    assert (got_ok, got_fix) == (ok, fix) and description.startswith(described)


def test_doctor_row_without_rsync(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor_check() == (
        False,
        "rsync not found",
        "`brew install rsync` on macOS, `sudo apt-get install rsync` on Debian/Ubuntu",
    )
