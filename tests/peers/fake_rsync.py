"""Stand-ins for the rsyncs a Mac has: each answers `--version` as the real one does, refuses any
option the real one lacks (exit 1, as rsync does for a syntax error), records its argument lists,
and otherwise hands the transfer to this machine's real rsync, rewriting the --stats lines into
its own wording. So the sync code runs over real SSH to a real rsync on the other side, with
exactly the options the old rsync would have been given.

Option tables, from Apple's sources (github.com/apple-oss-distributions/rsync):
- rsync 2.6.9: rsync/options.c, long_options (rsync-91.0.6);
- openrsync: openrsync/main.c, lopts, as first shipped (rsync-91.0.6, macOS 15.0): the smallest
  of Apple's builds (no --itemize-changes, added by rsync-146);
- OpenBSD's openrsync (github.com/kristapsdz/openrsync main.c): no --partial-dir, protocol 27,
  and its version line on stderr with no "compatible" line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RSYNC_269_LONG = set(
    """help version verbose no-verbose no-v quiet motd no-motd stats human-readable dry-run archive
    recursive no-recursive no-r dirs no-dirs no-d perms no-perms no-p executability times no-times
    no-t omit-dir-times modify-window super no-super owner no-owner no-o group no-group no-g devices
    no-devices specials no-specials links no-links no-l copy-links copy-unsafe-links safe-links
    copy-dirlinks keep-dirlinks hard-links no-hard-links relative no-relative implied-dirs
    no-implied-dirs chmod ignore-times size-only one-file-system update existing ignore-non-existing
    ignore-existing max-size min-size sparse inplace append del delete delete-before delete-during
    delete-after delete-excluded remove-sent-files remove-source-files force ignore-errors
    max-delete filter exclude include exclude-from include-from cvs-exclude whole-file
    no-whole-file checksum block-size compare-dest copy-dest link-dest fuzzy compress
    compress-level progress no-progress partial no-partial partial-dir delay-updates
    prune-empty-dirs log-file log-file-format out-format log-format itemize-changes bwlimit backup
    backup-dir suffix list-only read-batch write-batch only-write-batch files-from from0
    numeric-ids timeout rsh rsync-path temp-dir extended-attributes cache ipv4 ipv6 8-bit-output
    address port sockopts password-file blocking-io no-blocking-io protocol checksum-seed server
    sender config daemon detach no-detach""".split()
)
OPENRSYNC_91_LONG = set(
    """address append archive backup backup-dir block-size blocking-io bwlimit cache no-cache
    checksum checksum-seed chmod compare-dest copy-dest link-dest compress compress-level
    contimeout copy-dirlinks copy-links copy-unsafe-links cvs-exclude daemon del delete
    delete-before delete-during delete-delay delete-after delete-excluded devices no-devices
    dry-run exclude exclude-from executability existing extended-attributes filter force fuzzy
    group no-group no-g hard-links help human-readable ignore-errors ignore-existing
    ignore-non-existing ignore-times include include-from inplace ipv4 ipv6 keep-dirlinks links
    max-delete max-size min-size motd no-motd no-links no-l numeric-ids omit-dir-times owner
    no-owner no-o one-file-system password-file partial no-partial partial-dir perms no-perms no-p
    port protocol quiet read-batch recursive no-recursive no-r rsh rsync-path safe-links sender
    server size-only sockopts specials no-specials sparse stats suffix super no-super sync-file
    syslog-trace temp-dir timeout times no-times no-t update verbose no-verbose no-v whole-file
    no-whole-file only-write-batch write-batch progress no-progress relative no-relative
    remove-sent-files remove-source-files version dirs no-dirs files-from from0 out-format
    delay-updates modify-window 8-bit-output""".split()
)
OPENBSD_LONG = OPENRSYNC_91_LONG - {"partial-dir", "out-format", "delay-updates"}
SHORT = set("0468BCDEHIKLORSTWabcdeghklmnopqrtuvxz")

FLAVOURS = {
    # name: (stdout of --version, stderr of --version, long options, stats wording)
    "rsync-2.6.9": (
        "rsync  version 2.6.9  protocol version 29\n"
        "Copyright (C) 1996-2006 by Andrew Tridgell, Wayne Davison, and others.\n",
        "",
        RSYNC_269_LONG | {"itemize-changes"},
        "2.6.9",
    ),
    "rsync-2.6.3": (
        "rsync  version 2.6.3  protocol version 28\n",
        "",
        RSYNC_269_LONG - {"filter", "itemize-changes", "partial-dir"},
        "2.6.9",
    ),
    "openrsync": (
        "openrsync: protocol version 29\nrsync version 2.6.9 compatible\n",
        "",
        OPENRSYNC_91_LONG,
        "openrsync",
    ),
    "openrsync-openbsd": ("", "openrsync: protocol version 27\n", OPENBSD_LONG, "openrsync"),
    "mystery": ("rsync-ng 1.0\n", "", RSYNC_269_LONG, "2.6.9"),
}

SCRIPT = r"""#!{python}
import json, re, subprocess, sys

VERSION_OUT, VERSION_ERR = {version_out!r}, {version_err!r}
LONG, SHORT, STATS = {long!r}, {short!r}, {stats!r}
args = sys.argv[1:]
with open({record!r}, "a") as f:
    f.write(json.dumps(args) + "\n")
if "--version" in args:
    sys.stdout.write(VERSION_OUT)
    sys.stderr.write(VERSION_ERR)
    sys.exit(0)
i = 0
while i < len(args):
    a = args[i]
    if a == "-e":
        i += 2
        continue
    if a.startswith("--"):
        if a[2:].split("=", 1)[0] not in LONG:
            sys.stderr.write("rsync: " + a + ": unknown option\n")
            sys.exit(1)
    elif a.startswith("-") and len(a) > 1:
        bad = [c for c in a[1:] if c not in SHORT]
        if bad:
            sys.stderr.write("rsync: -" + bad[0] + ": unknown option\n")
            sys.exit(1)
    else:
        break
    i += 1
proc = subprocess.run([{real!r}] + args, stdout=subprocess.PIPE)
out = proc.stdout.decode(errors="replace")
def reword(pattern, new):
    global out
    out = re.sub(pattern, lambda m: new.format(m.group(1).replace(",", "")), out)
reword(r"Number of regular files transferred: ([\d,]+)", "Number of files transferred: {{}}")
if STATS == "openrsync":
    reword(r"Total transferred file size: ([\d,]+) bytes", "Total transferred file size: {{}} B")
    reword(r"Total bytes sent: ([\d,]+)", "Total sent: {{}} B")
else:
    out = re.sub(r"(Total [a-z ]+: )([\d,]+)", lambda m: m.group(1) + m.group(2).replace(",", ""), out)
sys.stdout.write(out)
sys.exit(proc.returncode)
"""


def install(folder: Path, flavour: str, python: str) -> Path:
    """Write `folder/rsync` playing `flavour`; its argument lists go to `folder/argv.jsonl`."""
    real = shutil.which("rsync")
    assert real and Path(real).parent != folder, "needs the real rsync on PATH"
    version_out, version_err, long, stats = FLAVOURS[flavour]
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "rsync"
    script.write_text(
        SCRIPT.format(
            python=python,
            version_out=version_out,
            version_err=version_err,
            long=sorted(long),
            short="".join(sorted(SHORT)),
            stats=stats,
            record=str(folder / "argv.jsonl"),
            real=real,
        )
    )
    script.chmod(0o755)
    return script


def calls(folder: Path) -> list[list[str]]:
    path = folder / "argv.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
