"""Which rsync the laptop has, found once, and what spotrun may ask of it.

Three kinds are common, and `rsync --version` tells them apart:
- rsync 3.1 or later (Linux, `brew install rsync`): "rsync  version 3.2.7  protocol version 32".
- rsync 2.6.9, as Apple shipped it up to macOS 14: the same first line with 2.6.9.
- openrsync, /usr/bin/rsync on macOS 15 and later: "openrsync: protocol version 29" and then
  "rsync version 2.6.9 compatible" (Apple's builds; OpenBSD's prints only the first line, on stderr).

What each accepts, read from their option tables (Apple's rsync sources, rsync-91.0.6 through
rsync-182: rsync/options.c for 2.6.9, openrsync/main.c; OpenBSD's openrsync/main.c):
- every one has -a, -z, -e, --delete, --exclude, --filter with dir-merge (`:- .gitignore`) and
  protect (`P /dir/`) rules, --rsync-path, --stats and --progress: what a correct sync needs, and
  --partial-dir but for OpenBSD's openrsync (refused below anyway);
- only rsync 3.1+ has --info=progress2 (one progress line for the whole transfer); the others get
  --progress (a line per file);
- rsync 2.6.9 and 3.x have --itemize-changes; the first openrsync (macOS 15.0) has not.

On macOS 15.0-15.3 /usr/bin/rsync is a wrapper (Apple's rsync.wrapper.c) that answers --version
with openrsync but runs rsync 2.6.9 when an option is outside its openrsync list (--filter and
--stats are): the options chosen for openrsync suit both, and --stats is read in either wording.

The filter rules must also reach the other end, which takes protocol 29: OpenBSD's openrsync
speaks 27 only and stops with "rules are incompatible with remote rsync" (tried: built from
github.com/kristapsdz/openrsync, against rsync 3.2.7 over ssh). An openrsync below protocol 29
cannot carry the rules that keep ignored files home and a run's outputs safe from --delete, and an
rsync older than 2.6.9, or one whose version cannot be read, may lack them: rather than fail
midway or sync without them, spotrun stops before syncing with "rsync 3.1+ needed: `brew install
rsync`".
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

from ec2.errors import ToolkitError

RSYNC_BIN = "rsync"
MODERN = (3, 1)
# The oldest rsync whose option table and filter rules were checked (Apple's last GPLv2 build).
OLDEST = (2, 6, 9)
# Dir-merge and protect rules travel to the other end from this protocol on.
FILTER_PROTOCOL = 29
UPGRADE = "rsync 3.1+ needed: `brew install rsync`"
INSTALL = "`brew install rsync` on macOS, `sudo apt-get install rsync` on Debian/Ubuntu"


@dataclass(frozen=True)
class RsyncInfo:
    """The local rsync: `flavour` is "rsync" (the samba.org program), "openrsync", "missing" or
    "unknown"; `version` is rsync's own, or for openrsync the version it claims to be compatible
    with ((2, 6, 9), or () when it claims none)."""

    path: str | None
    flavour: str
    version: tuple[int, ...] = ()
    protocol: int | None = None

    @property
    def usable(self) -> bool:
        if self.flavour == "openrsync":
            return (self.protocol or 0) >= FILTER_PROTOCOL
        return self.flavour == "rsync" and self.version >= OLDEST

    @property
    def modern(self) -> bool:
        return self.flavour == "rsync" and self.version >= MODERN

    @property
    def progress2(self) -> bool:
        return self.modern

    @property
    def itemize(self) -> bool:
        return self.flavour == "rsync" and self.usable

    def describe(self) -> str:
        if self.flavour == "missing":
            return "rsync not found"
        version = ".".join(map(str, self.version))
        protocol = f", protocol {self.protocol}" if self.protocol else ""
        if self.flavour == "openrsync":
            claim = f"rsync {version} compatible" if version else "no rsync version claimed"
            return f"openrsync ({claim}{protocol}) at {self.path}"
        if self.flavour == "rsync":
            return f"rsync {version}{protocol} at {self.path}"
        return f"an rsync whose version could not be read at {self.path}"

    def require(self) -> RsyncInfo:
        """Itself, or ToolkitError when a sync with it would be wrong."""
        if self.flavour == "missing":
            raise ToolkitError(f"rsync not found on this computer: {INSTALL}")
        if not self.usable:
            raise ToolkitError(f"{UPGRADE} (found {self.describe()})")
        return self


_SAMBA = re.compile(r"^rsync\s+version\s+v?(\d+)\.(\d+)(?:\.(\d+))?\S*\s+protocol version (\d+)", re.M)
_OPENRSYNC = re.compile(r"^openrsync: protocol version (\d+)", re.M)
_COMPATIBLE = re.compile(r"^rsync version (\d+)\.(\d+)(?:\.(\d+))? compatible", re.M)


def _numbers(match: re.Match, count: int) -> tuple[int, ...]:
    return tuple(int(g) for g in match.groups()[:count] if g is not None)


def parse_version(text: str, path: str | None = None) -> RsyncInfo:
    """What `rsync --version` printed (stdout and stderr together) → RsyncInfo."""
    if m := _OPENRSYNC.search(text):
        c = _COMPATIBLE.search(text)
        return RsyncInfo(path, "openrsync", _numbers(c, 3) if c else (), int(m.group(1)))
    if m := _SAMBA.search(text):
        return RsyncInfo(path, "rsync", _numbers(m, 3), int(m.group(4)))
    return RsyncInfo(path, "unknown")


@functools.lru_cache(maxsize=8)
def _detect(path: str) -> RsyncInfo:
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return RsyncInfo(path, "unknown")
    return parse_version(proc.stdout + "\n" + proc.stderr, path)


def local_rsync() -> RsyncInfo:
    """The rsync first on PATH, asked once per program (a later PATH change is seen)."""
    path = shutil.which(RSYNC_BIN)
    return _detect(path) if path else RsyncInfo(None, "missing")


def doctor_check() -> tuple[bool, str, str]:
    """For `fab doctor`: (ok, description, fix). ok is False only when spotrun cannot sync with
    it; an older rsync that works, with less, is ok and its fix names the upgrade."""
    info = local_rsync()
    if info.flavour == "missing":
        return False, info.describe(), INSTALL
    if not info.usable:
        return False, info.describe(), UPGRADE
    if info.modern:
        return True, info.describe(), ""
    limits = ["per-file progress"]
    if not info.itemize:
        limits.append("no itemized changes")
    return True, f"{info.describe()}: works ({', '.join(limits)})", f"for more, {UPGRADE}"
