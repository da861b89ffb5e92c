"""Does the checkpoint fit the spot notice? Timed once per run, on the real checkpoint.

On a spot instance the notice watcher (ec2/remote/spot_watch.py) tells the trainer how long an
interruption notice gives it, in SPOTRUN_NOTICE_S (AWS's two minutes); anywhere else (on-demand,
not on EC2, no watcher) the variable is unset and nothing here runs.

With an s3:// checkpoint_dir, rank 0 times its first save of last.pt and that file's upload. The
first real save, not an extra save at start: at start AdamW holds no moments yet, so that file
would be about a third of the real one, and writing it would delay training; this save happens
anyway and its upload already runs in the background, so the check costs training nothing. It
logs one line:

    checkpoint: save 3.1 s, upload 41.0 s of 1.20 GB; fits the 2-minute notice (44.1 of 120 s)

When save + upload take more than half of the notice, the line says so and the following saves
(the notice's among them) are staged on the instance's NVMe instance store (`checkpoint_nvme_dir`;
the Deep Learning AMI mounts it at /opt/dlami/nvme on types that have one): the root volume is gp3
at its baseline 125 MiB/s unless provisioned higher, which caps both the write and the upload's
read of a large file; the instance store has no such cap. The upload still runs in the background
and the notice's exit still waits for it (ml/trainer.py finish → CheckpointStore.flush). Without an
NVMe mount the line says so, and what to do.
https://docs.aws.amazon.com/ebs/latest/userguide/general-purpose.html (gp3 baseline)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ml.config import NVME_MOUNT

NOTICE_ENV = "SPOTRUN_NOTICE_S"
# The share of the notice that save + upload may take before the staging moves to NVMe: the other
# half is the margin for a step in flight, an older upload still going, and a slower S3.
FIT_SHARE = 0.5
STAGING = ("spotrun", "checkpoint_staging")


def notice_seconds() -> float | None:
    """The notice's length when this run is on a spot instance (set by the watcher), else None."""
    text = os.environ.get(NOTICE_ENV, "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


def fast_disk(setting: str | None) -> tuple[Path | None, str]:
    """Where to stage checkpoints when they are slow, and why not when None. The default (the
    DLAMI's mount point) counts only when something is mounted there; a folder the user names is
    taken as it is, when it exists and can be written."""
    if not setting:
        return None, "checkpoint_nvme_dir is null"
    path = Path(setting).expanduser()
    if setting == NVME_MOUNT and not os.path.ismount(path):
        return None, f"no NVMe instance store is mounted at {NVME_MOUNT} on this instance"
    if not path.is_dir() or not os.access(path, os.W_OK):
        return None, f"checkpoint_nvme_dir {path} is not a folder this run can write"
    return path.joinpath(*STAGING), ""


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _notice(seconds: float) -> str:
    return f"{seconds / 60:g}-minute notice" if seconds % 60 == 0 else f"{seconds:g}-second notice"


def verdict(save_s: float, upload_s: float, nbytes: int, notice_s: float, fast: Path | None, why: str) -> str:
    """The log line for one timed save + upload."""
    took = save_s + upload_s
    line = f"checkpoint: save {save_s:.1f} s, upload {upload_s:.1f} s of {_size(nbytes)}; "
    if took <= FIT_SHARE * notice_s:
        return line + f"fits the {_notice(notice_s)} ({took:.1f} of {notice_s:g} s)"
    line += f"more than half of the {_notice(notice_s)} ({took:.1f} of {notice_s:g} s): "
    if fast is not None:
        return line + (
            f"from the next save on, checkpoints are staged on the NVMe instance store in {fast} "
            "(upload in the background; the notice's exit waits for it)"
        )
    return line + (
        f"{why}, so checkpoints stay staged where they are and a notice may cut the upload short; "
        "choose an instance type with an instance store (its NVMe is mounted at "
        f"{NVME_MOUNT}), or set checkpoint_nvme_dir to a faster local disk"
    )


class FitCheck:
    """Times the first save of last.pt and its upload; decides the staging once, on rank 0."""

    def __init__(self, notice_s: float, nvme_setting: str | None, say: Callable[[str], None]):
        self.notice_s = notice_s
        self.nvme_setting = nvme_setting
        self.say = say
        self.pending = True  # until the first last.pt has been timed
        self.restage_to: Path | None = None  # set by the upload thread; applied before a save

    def saved(self, store, name: str, save_s: float) -> None:
        """The first save of ``name`` took ``save_s``: time its upload (when it lands, `uploaded`)."""
        if not self.pending:
            return
        self.pending = False

        def uploaded(nbytes: int, upload_s: float, error: str | None) -> None:
            if error is not None:
                self.say(
                    f"checkpoint: save {save_s:.1f} s; its upload failed, so the next save is timed instead"
                )
                self.pending = True
                return
            fast, why = fast_disk(self.nvme_setting)
            slow = save_s + upload_s > FIT_SHARE * self.notice_s
            self.say(verdict(save_s, upload_s, nbytes, self.notice_s, fast, why))
            if slow and fast is not None:
                self.restage_to = fast

        store.on_uploaded(name, uploaded)

    def apply(self, store) -> None:
        """Before a save, on the training thread: move the staging when the check asked for it."""
        if self.restage_to is not None:
            store.restage(self.restage_to)
            self.restage_to = None
