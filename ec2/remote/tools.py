"""The laptop's own ssh and rsync: present, and in versions that work with spotrun.

Rows are (name, status, detail, fix) with status "ok" or "fail", as `fab doctor` prints them.
"""

from __future__ import annotations

import re
import shutil
import subprocess

OK, FAIL = "ok", "fail"


def _version(text: str, pattern: str) -> tuple[int, ...] | None:
    m = re.search(pattern, text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def local_tools() -> list[tuple[str, str, str, str]]:
    """ssh (7.6+ for accept-new host keys) and rsync (3.1+; macOS's 2.6.9 and openrsync lack
    options spotrun uses)."""
    rows = []
    if shutil.which("ssh") is None:
        rows.append(("ssh", FAIL, "not found", "install OpenSSH (apt install openssh-client)"))
    else:
        got = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        text = (got.stderr or got.stdout).strip()
        version = _version(text, r"OpenSSH_(\d+\.\d+)")
        if version is None or version >= (7, 6):
            rows.append(("ssh", OK, text.splitlines()[0] if text else "present", ""))
        else:
            rows.append(("ssh", FAIL, f"{text}: older than 7.6", "upgrade OpenSSH (brew install openssh)"))
    if shutil.which("rsync") is None:
        rows.append(
            ("rsync", FAIL, "not found", "install rsync 3.1+ (brew install rsync, apt install rsync)")
        )
        return rows
    got = subprocess.run(["rsync", "--version"], capture_output=True, text=True)
    first = (got.stdout or got.stderr).strip().splitlines()[0] if (got.stdout or got.stderr).strip() else ""
    version = _version(first, r"version (\d+\.\d+(?:\.\d+)?)")
    if "openrsync" in first or version is None or version < (3, 1):
        rows.append(("rsync", FAIL, f"{first or 'unknown version'}: rsync 3.1+ needed", "brew install rsync"))
    else:
        rows.append(("rsync", OK, first, ""))
    return rows
