"""The laptop's own ssh and rsync: present, and in versions that work with spotrun.

Rows are (name, status, detail, fix) with status "ok" or "fail", as `fab doctor` prints them.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ec2.remote import rsync_version

OK, FAIL = "ok", "fail"


def _version(text: str, pattern: str) -> tuple[int, ...] | None:
    m = re.search(pattern, text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def local_tools() -> list[tuple[str, str, str, str]]:
    """ssh (7.6+ for accept-new host keys) and rsync (what ec2.remote.rsync_version says: an
    older rsync that can still sync passes, with the upgrade named)."""
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
    ok, description, fix = rsync_version.doctor_check()
    rows.append(("rsync", OK if ok else FAIL, description, fix))
    return rows
