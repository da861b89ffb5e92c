"""rsync over the machine's SSH options: push the code (`fab sync`), pull a run's outputs
(`fab download`). Commands are built by pure functions and tested as argument lists; a dropped
connection is retried with exponential back-off and then reported as ConnectionLost.

- sync honours every `.gitignore` and `.spotrunignore` (rsync dir-merge filters) and never sends
  .git, .venv, data/, outputs/ or credentials (.env, .aws/, .ssh/, *.pem); `--delete` applies
  only inside REMOTE_DIR/code/.
- download brings only what is new (no --delete: what was already downloaded stays).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import guard
from common.s3uri import is_s3
from ec2.errors import ConnectionLost, ToolkitError
from ec2.remote.rsync_version import RSYNC_BIN, RsyncInfo, local_rsync
from ec2.remote.runs import code_dir, run_dir
from ec2.remote.ssh import (
    Machine,
    backoff_delays,
    connect_timeout_s,
    join_path,
    prepare_local,
    quote_path,
    rsync_rsh,
    wait_budget,
)

# rsync exits that mean the connection went away (10 socket I/O, 12 protocol stream, 30 timeout
# in data send/receive, 35 timeout waiting for daemon connection, 255 ssh itself). 10 is what rsync
# reports when the machine's sshd dies mid-transfer about as often as 12 (the fault battery).
RETRYABLE = {10, 12, 30, 35, 255}
# Never sent, whatever the ignore files say (a project may lack them, a user may edit them):
# the repository, the venv, top-level data and outputs, and anything that holds credentials or
# keys, in any folder (no credentials travel to an instance; it uses its IAM instance profile).
# Folder rules are anchored with `/` where a package may share the name (ml/data/ is code).
# .git and .venv without a trailing slash: a worktree's .git is a file and a venv may be a
# symlink, which a `dir/` pattern would let through.
ALWAYS_EXCLUDED = [
    ".git",
    ".venv",
    "/data/",
    "/outputs/",
    ".rsync-partial/",
    ".env",
    ".env.*",
    ".envrc",
    ".aws/",
    ".ssh/",
    "*.pem",
    ".netrc",
]
PARTIAL_DIR = ".rsync-partial"
ATOMIC_TEMP = ".*.tmp"
# "Some source files vanished": a file removed while rsync ran (the trainer replacing a checkpoint
# by rename mid-download). What did arrive is whole, and the next run brings the new file.
VANISHED = 24


@dataclass(frozen=True)
class TransferStats:
    files_transferred: int
    bytes_transferred: int  # size of the files' data that moved (before compression)
    bytes_sent: int  # bytes on the wire from the sender
    itemized: list[str]


def rsync_target(host: str, path: str) -> str:
    """`host:path`; rsync resolves a relative path against the remote home, so `~/x` → `x`."""
    if path.startswith("~/"):
        path = path[2:]
    return f"{host}:{path}"


def _progress_flags(tty: bool, rsync: RsyncInfo) -> list[str]:
    """One progress line for the whole transfer at a terminal (a line per file before rsync
    3.1), else the changes listed for parse_stats; --stats for the counts either way."""
    if tty:
        return ["--info=progress2" if rsync.progress2 else "--progress", "--stats"]
    return ["--itemize-changes", "--stats"] if rsync.itemize else ["--stats"]


def protect_filters(paths: tuple[str, ...] | list[str]) -> list[str]:
    """`--delete` spares these folders of code/ (a run's output and checkpoint dirs, which the
    laptop's tree does not have unless an ignore file happens to name them). Absolute, home and
    s3:// paths lie outside code/ and need nothing."""
    return [
        f"--filter=P /{p.strip('/')}/"
        for p in paths
        if p and not is_s3(p) and not p.startswith(("/", "~")) and p.strip("/") not in ("", ".")
    ]


def rsync_argv(
    machine: Machine,
    options: list[str],
    source: str,
    target: str,
    *,
    tty: bool = False,
    rsync: RsyncInfo | None = None,
) -> list[str]:
    """The one rsync command line: archive + compression, the same SSH options as every other
    connection, progress (or itemized changes to parse), then the options of this transfer.
    Only options the local rsync (`rsync`, default: the one on PATH) accepts; ToolkitError
    before anything runs when it cannot sync correctly (see ec2/remote/rsync_version.py)."""
    rsync = (rsync or local_rsync()).require()
    return [
        RSYNC_BIN,
        "-az",
        f"--partial-dir={PARTIAL_DIR}",
        *options,
        *_progress_flags(tty, rsync),
        "-e",
        rsync_rsh(machine.record, control=machine.control),
        source,
        target,
    ]


def _make_remote_dir(path: str) -> str:
    # Make the remote folder in the same connection (older rsyncs lack --mkpath).
    return f"--rsync-path=mkdir -p {quote_path(path)} && rsync"


def code_filters() -> list[str]:
    """What of the project is code: everything but ALWAYS_EXCLUDED and what the ignore files name.
    `fab sync` and a detached run's bundle (ec2.cloud.bundle) both select with these."""
    return [
        *(f"--exclude={p}" for p in ALWAYS_EXCLUDED),
        "--filter=:- .gitignore",
        "--filter=:- .spotrunignore",
    ]


def sync_argv(
    machine: Machine,
    local_root: Path,
    *,
    tty: bool = False,
    protect: tuple[str, ...] | list[str] = (),
    dest: str | None = None,
    delete: bool = True,
) -> list[str]:
    """To REMOTE_DIR/code/, or to `dest` (the workspace volume: `delete` off, files made there stay)."""
    dest = dest or code_dir(machine.record.remote_dir)
    options = [
        *(["--delete"] if delete else []),
        *protect_filters(protect),
        *code_filters(),
        _make_remote_dir(dest),
    ]
    target = rsync_target(machine.record.host, dest.rstrip("/") + "/")
    return rsync_argv(machine, options, f"{local_root.resolve()}/", target, tty=tty)


def download_argv(machine: Machine, remote_path: str, dest: Path, *, tty: bool = False) -> list[str]:
    options = [
        # Files being received are written in DEST/.rsync-partial/ (made by download_dir), not
        # beside the checkpoints: a download killed outright (SIGKILL, a closed laptop) leaves its
        # temporary file there, where nothing takes it for part of the run (upload_dir skips it).
        f"--temp-dir={PARTIAL_DIR}",
        f"--exclude={PARTIAL_DIR}/",
        # A checkpoint being written (common.atomic's temporary file) is not a checkpoint yet.
        f"--exclude={ATOMIC_TEMP}",
    ]
    source = rsync_target(machine.record.host, remote_path.rstrip("/") + "/")
    return rsync_argv(machine, options, source, f"{dest}/", tty=tty)


def upload_argv(machine: Machine, local_dir: Path, remote_path: str, *, tty: bool = False) -> list[str]:
    options = [f"--exclude={PARTIAL_DIR}/", _make_remote_dir(remote_path)]
    target = rsync_target(machine.record.host, remote_path.rstrip("/") + "/")
    return rsync_argv(machine, options, f"{Path(local_dir).resolve()}/", target, tty=tty)


# The --stats wording of rsync 3.x ("regular files", numbers with commas), 2.6.9 ("Number of
# files transferred") and openrsync ("Total sent: 1234 B").
_STAT_LINES = {
    "files_transferred": re.compile(r"Number of (?:regular )?files transferred: ([\d,]+)"),
    "bytes_transferred": re.compile(r"Total transferred file size: ([\d,]+)"),
    "bytes_sent": re.compile(r"Total (?:bytes )?sent: ([\d,]+)"),
}


def parse_stats(output: str) -> TransferStats:
    values = {}
    for key, pattern in _STAT_LINES.items():
        m = pattern.search(output)
        values[key] = int(m.group(1).replace(",", "")) if m else 0
    # Itemized lines look like ">f+++++++++ path" or "*deleting   path".
    itemized = [ln for ln in output.splitlines() if re.match(r"^([<>ch.*][fdLDS]|\*deleting)", ln)]
    return TransferStats(itemized=itemized, **values)


def _run_rsync(argv: list[str], *, echo: bool) -> tuple[int, str, str]:
    """Run rsync, passing its output through when `echo` while keeping a copy to parse."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    chunks: list[bytes] = []
    while chunk := proc.stdout.read1(65536):
        chunks.append(chunk)
        if echo:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    stderr = proc.stderr.read().decode(errors="replace")
    return proc.wait(), b"".join(chunks).decode(errors="replace"), stderr


def rsync_with_retries(machine: Machine, argv: list[str], what: str, *, echo: bool = False) -> TransferStats:
    prepare_local(machine.record)
    delays = backoff_delays(machine.attempts, machine.backoff_s)
    stderr = ""
    # Attempts that never got through (no output at all) share one wait budget, as Machine.run's
    # do; one that moved files resets it (a long transfer that drops is worth resuming).
    silent_since = time.monotonic()
    for attempt in range(len(delays) + 1):
        code, out, stderr = _run_rsync(argv, echo=echo)
        if code in (0, VANISHED):
            return parse_stats(out)
        if code not in RETRYABLE:
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            raise ToolkitError(f"{what} failed (rsync exit {code}): {tail}; fix the cause above and rerun")
        if out.strip():
            silent_since = time.monotonic()
        more = attempt < len(delays) and (
            time.monotonic() + delays[attempt] + connect_timeout_s() <= silent_since + wait_budget()
        )
        machine.check_still_there(last=not more)
        if not more:
            break
        print(
            f"{what}: connection lost (rsync exit {code}); retrying in {delays[attempt]:g} s", file=sys.stderr
        )
        time.sleep(delays[attempt])
    # ssh says why it could not connect ("Connection to HOST port P timed out"); rsync's own last
    # line ("unexplained error (code 255)") does not.
    said = [line for line in stderr.splitlines() if line.strip() and not line.startswith("rsync")]
    stderr = "\n".join(said) or stderr
    raise machine.lost(what, stderr, attempt + 1) if stderr else ConnectionLost(f"{what}: connection lost")


def sync_code(
    machine: Machine,
    local_root: Path | str = ".",
    *,
    echo: bool = False,
    protect: tuple[str, ...] | list[str] = (),
    dest: str | None = None,
) -> TransferStats:
    """Push the project to REMOTE_DIR/code/ (incremental; deletions limited to code/, sparing the
    `protect`ed folders), or to `dest` on the workspace volume (same filters, nothing deleted)."""
    local_root = Path(local_root)
    if not local_root.is_dir():
        raise ToolkitError(f"{local_root} is not a folder; run `fab sync` from the project root")
    tty = echo and sys.stdout.isatty()
    argv = sync_argv(machine, local_root, tty=tty, protect=protect, dest=dest, delete=dest is None)
    return rsync_with_retries(machine, argv, "sync", echo=echo)


def upload_dir(
    machine: Machine, local_dir: Path | str, remote_path: str, *, echo: bool = False
) -> TransferStats:
    """Push a local folder (e.g. a downloaded checkpoint dir) to a remote path; nothing is deleted.
    A relative `remote_path` is taken inside the code dir, as the trainer sees it."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise ToolkitError(f"{local_dir} is not a folder; check the path (e.g. outputs/NAME/checkpoint)")
    if not remote_path.startswith(("/", "~")):
        remote_path = join_path(code_dir(machine.record.remote_dir), remote_path)
    tty = echo and sys.stdout.isatty()
    argv = upload_argv(machine, local_dir, remote_path, tty=tty)
    return rsync_with_retries(machine, argv, "upload", echo=echo)


def remote_output_dir(machine: Machine, run: str) -> str | None:
    """The trainer output_dir recorded by `fab train` (absolute, or relative to code/)."""
    rdir = quote_path(run_dir(machine.record.remote_dir, run))
    res = machine.run(f"cat {rdir}/output_dir 2>/dev/null || true")
    value = res.stdout.strip()
    if not value:
        return None
    return value if value.startswith(("/", "~")) else join_path(code_dir(machine.record.remote_dir), value)


def download_outputs(
    machine: Machine,
    run: str = "train",
    dest: Path | str | None = None,
    *,
    output_dir: str | None = None,
    echo: bool = False,
) -> dict[str, TransferStats]:
    """Pull the run's output_dir (checkpoints, train.log, metrics.csv, tensorboard, plots) into
    `dest` and the run dir (log, exit_code, command) into `dest/run/`. Only what is new moves."""
    from ec2 import paths

    dest = Path(dest) if dest else paths.outputs_dir(machine.name)
    out_dir = output_dir or remote_output_dir(machine, run)
    stats: dict[str, TransferStats] = {}
    if out_dir and is_s3(out_dir):
        print(f"outputs are in {out_dir}; copy them with `aws s3 sync {out_dir} {dest}`", file=sys.stderr)
    elif out_dir:
        stats["outputs"] = download_dir(machine, out_dir, dest, echo=echo)
    stats["run"] = download_dir(machine, run_dir(machine.record.remote_dir, run), dest / "run", echo=echo)
    return stats


def refuse_foreign_dest(dest: Path, force: bool, marks: tuple[str, ...] = (), limit: int = 1000) -> None:
    """An explicit --dest that download did not fill (no DEST/.rsync-partial/, which every download
    makes, nor one of ``marks``, e.g. `fab run`'s run.json) holds someone else's files: rsync
    would overwrite those of the same names (train.log, checkpoint/last.pt ...) with the
    machine's. Refused unless ``force`` (common/guard.py); the walk stops at ``limit`` files (a
    --dest of ~ must not read the whole home folder)."""
    if not dest.is_dir() or any((dest / mark).exists() for mark in (PARTIAL_DIR, *marks)):
        return
    files = sorted(str(p.relative_to(dest)) for p in itertools.islice(_files_under(dest), limit))
    count = f"{limit} or more" if len(files) == limit else str(len(files))
    guard.unless_forced(
        force,
        target=f"downloading into --dest {dest}",
        lost=[f"{count} file(s) that spotrun did not put there ({guard.listing(files, 2)})"] if files else [],
        verb="overwrite same-named files among",
        instead="choose an empty or new --dest",
    )


def _files_under(folder: Path):
    for dirpath, _, names in os.walk(folder):
        for name in names:
            yield Path(dirpath) / name


def download_dir(
    machine: Machine, remote_path: str, dest: Path | str, *, echo: bool = False
) -> TransferStats:
    """Pull a remote folder into ``dest``, only what is new. Files being received are written in
    DEST/.rsync-partial/ (see download_argv), which rsync needs to exist: every download goes
    through here so none can forget it."""
    dest = Path(dest)
    (dest / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
    tty = echo and sys.stdout.isatty()
    return rsync_with_retries(
        machine, download_argv(machine, remote_path, dest, tty=tty), "download", echo=echo
    )


def sync_to_volume(m: Machine, mount_point: str, path: str | None) -> tuple[str, TransferStats]:
    """The project (or `path`) to the workspace volume mounted at `mount_point`: MOUNT/code (or
    MOUNT/<path's name>), nothing deleted there; where it went and what moved."""
    from ec2.remote.mount import check_mounted_command

    if m.run(check_mounted_command(mount_point), check=False).code != 0:
        raise ToolkitError(
            f"no volume is mounted at {mount_point} on {m.name}; set volume_name in configs/aws.yaml and "
            f"launch, or mount it with `fab volume-mount --name {m.name}`"
        )
    local = Path(path or ".")
    dest = f"{mount_point.rstrip('/')}/{'code' if path is None else local.resolve().name}"
    return dest, sync_code(m, local, echo=True, dest=dest)
