"""Carry a run's checkpoint from one instance to the next through the laptop, for checkpoints
kept on the instance's disk (an s3:// checkpoint_dir needs none of this: the trainer resumes from
the bucket).

`fab download` (and `fab run`, every --download-every seconds) brings the checkpoint folder into
outputs/NAME/; on a fresh instance `fab sync` (and `fab run`'s restore stage) pushes it back where
the trainer looks, so `resume=auto` continues from it.
"""

from __future__ import annotations

from pathlib import Path

from common.s3uri import is_s3
from ec2.remote.runs import code_dir
from ec2.remote.ssh import Machine, join_path, quote_path
from ec2.remote.sync import upload_dir

RESUME_FILE = "last.pt"


def laptop_checkpoint(outputs: Path, output_dir: str | None, checkpoint_dir: str | None) -> Path | None:
    """Where downloads put the checkpoint folder on the laptop: its place under outputs/NAME/ when
    checkpoint_dir lies inside output_dir (downloads mirror output_dir), else outputs/NAME/checkpoint.
    None when the checkpoints live in S3."""
    if not checkpoint_dir or is_s3(checkpoint_dir):
        return None
    if output_dir:
        base = output_dir.rstrip("/") + "/"
        if checkpoint_dir.startswith(base):
            return outputs / checkpoint_dir[len(base) :]
    return outputs / "checkpoint"


def remote_checkpoint(machine: Machine, checkpoint_dir: str) -> str:
    """The trainer's checkpoint_dir on the machine: relative paths are inside the synced code."""
    if checkpoint_dir.startswith(("/", "~")):
        return checkpoint_dir
    return join_path(code_dir(machine.record.remote_dir), checkpoint_dir)


def restore_checkpoint(machine: Machine, local: Path | None, checkpoint_dir: str) -> int | None:
    """Push the laptop's checkpoint folder to a machine that has none; the files sent, or None when
    there was nothing to send or the machine already holds a checkpoint (a newer one, most likely:
    the laptop's copy must never overwrite a run that went on)."""
    if local is None or not (local / RESUME_FILE).is_file():
        return None
    target = remote_checkpoint(machine, checkpoint_dir)
    probe = machine.run(f"test -e {quote_path(join_path(target, RESUME_FILE))}", check=False)
    if probe.code == 0:
        return None
    return upload_dir(machine, local, target).files_transferred
