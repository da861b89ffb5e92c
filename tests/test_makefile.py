"""The Makefile on a laptop: `make setup` refuses a Python older than 3.10 with the fix, before
making anything, and its recipes use no GNU-only tool flags (macOS ships BSD tools and make 3.81).

make runs in a temporary folder (`make -C DIR -f Makefile`), so a wrong pass could never touch the
checkout's .venv.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = REPO / "Makefile"
FIX = "`brew install python@3.12`, then `make setup PY=python3.12`"

# The running interpreter, reporting an older version to whatever code it is given (-c CODE):
# macOS's stock python3 can be 3.9.
OLD_PYTHON = """#!/bin/sh
[ "$1" = -c ] || exit 99
exec {real} -c "import sys; sys.version_info = ({major}, {minor}, 18, 'final', 0)
exec(compile(sys.argv[1], '-c', 'exec'))" "$2"
"""


def _make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "-C", str(tmp_path), "-f", str(MAKEFILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("version", [(3, 9), (2, 7)])
def test_setup_refuses_an_old_python_with_the_fix(tmp_path, version):
    old = tmp_path / "python3.old"
    old.write_text(OLD_PYTHON.format(real=sys.executable, major=version[0], minor=version[1]))
    old.chmod(0o755)
    proc = _make(tmp_path, "setup", f"PY={old}")
    assert proc.returncode != 0
    assert f"needs Python 3.10 or later, and {old} is {version[0]}.{version[1]}: {FIX}" in proc.stderr
    assert not (tmp_path / ".venv").exists()  # stopped before the venv


def test_setup_names_a_missing_python(tmp_path):
    proc = _make(tmp_path, "setup", "PY=python3.nosuch")
    assert proc.returncode != 0 and f"python3.nosuch not found: {FIX}" in proc.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_current_python_passes(tmp_path):
    proc = _make(tmp_path, "python-check", f"PY={sys.executable}")
    assert proc.returncode == 0 and proc.stderr == ""


# GNU spellings with no BSD/macOS equivalent (or a different meaning there).
GNU_ONLY = {
    r"\bsed -i\b(?! '')": "sed -i (BSD sed needs -i '')",
    r"\bstat -c\b": "stat -c (BSD stat uses -f)",
    r"\bgrep -\w*P": "grep -P (no PCRE in BSD grep)",
    r"\breadlink -f\b": "readlink -f (missing before macOS 12.3)",
    r"\bdate -d\b": "date -d (BSD date uses -j -f)",
    r"(^|[;&|(]\s*)timeout\b": "timeout (not on macOS)",
    r"\bsha256sum\b": "sha256sum (macOS: shasum -a 256)",
    r"\bxargs -\w*r": "xargs -r (BSD xargs)",
    r"\bnproc\b": "nproc (macOS: sysctl -n hw.ncpu)",
    r"\bfind\b[^\n]*-printf": "find -printf (BSD find)",
    r"--color\b": "--color (GNU ls/grep)",
}


def test_make_recipes_use_no_gnu_only_flags():
    recipes = [ln for ln in MAKEFILE.read_text().splitlines() if ln.startswith("\t")]
    found = [
        f"{line.strip()[:60]}: {why}"
        for line in recipes
        for pattern, why in GNU_ONLY.items()
        if re.search(pattern, line)
    ]
    assert not found


def test_make_data_keeps_a_dataset_written_before_the_writer_marked_its_files(tmp_path):
    """`make demo` runs `make data` every time: a data/synthetic from an older checkout (its files
    carry no `generator` mark, so the writer would refuse them as another dataset) is kept, not
    refused, and not overwritten."""
    old = tmp_path / "data" / "synthetic" / "t15.2023.08.11" / "data_train.hdf5"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an older checkout's synthetic file")
    proc = _make(tmp_path, "data", "BIN=/nonexistent")  # the writer must not even be started
    assert proc.returncode == 0, proc.stderr
    assert "data/synthetic is there" in proc.stdout
    assert old.read_bytes() == b"an older checkout's synthetic file"


def test_make_data_writes_the_dataset_when_there_is_none(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "make_synthetic_data.py").write_text(
        "import sys, pathlib\n"
        "p = pathlib.Path(sys.argv[2], 's', 'data_train.hdf5'); p.parent.mkdir(parents=True)\n"
        "p.write_text('written')\n"
    )
    proc = _make(tmp_path, "data", f"BIN={Path(sys.executable).parent}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "synthetic" / "s" / "data_train.hdf5").read_text() == "written"
