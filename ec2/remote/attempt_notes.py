"""What a detached run's boot notes of its attempt, from the files on the instance, so that the run's
S3 record says what an attended run's run.json says (the laptop's engine notes the same fields from
its polls, ec2.journey.engine): when the watcher saw the notice and how long the checkpoint took to
be safe (its `preempted` record), the last step the log showed, and the step the trainer resumed
from with the seconds from the previous attempt's notice. `fab rehearse` times a detached run's
recovery from them, and `fab watch`'s summary counts the steps lost. Standard library and common/
only: the boot runs with the instance's bare Python."""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.attempt import Attempt
from common.steps import last_step, resumed_step


class ResumeWatch:
    """The run's log read as it grows (each byte once, whole lines only), until the trainer's
    "resumed from ... at step N" line."""

    def __init__(self, log: Path):
        self.log = log
        self.offset = 0

    def check(self, attempt: Attempt, before: Attempt | None) -> bool:
        """True when it noted the resume in ``attempt`` just now (the record is to be saved)."""
        if attempt.resumed_step is not None or not self.log.is_file():
            return False
        with self.log.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(whole)
        step = resumed_step(whole.decode(errors="replace"))
        if step is None:
            return False
        attempt.resumed_step = step
        if before is not None and before.notice_seen_at is not None:
            attempt.seconds_notice_to_resumed = round(max(time.time() - before.notice_seen_at, 0.0), 1)
        return True


def note_end(attempt: Attempt, run_dir: Path) -> None:
    """The ended attempt's last step (its log) and, after a notice, when the watcher saw it (its
    `notice` record) and the seconds it took to have the checkpoint safe (its `preempted` record,
    ec2.remote.spot_watch)."""
    log = run_dir / "log"
    if log.is_file():
        step = last_step(log.read_text(errors="replace"))
        if step is not None:
            attempt.last_step = step
    notice, preempted = _record(run_dir / "notice"), _record(run_dir / "preempted")
    if notice.get("seen_at") is not None:
        attempt.notice_seen_at = notice["seen_at"]
    if preempted.get("seconds_notice_to_safe") is not None:
        attempt.seconds_notice_to_safe = preempted["seconds_notice_to_safe"]


def _record(path: Path) -> dict:
    """A watcher's JSON record; {} when there is none (no notice). It writes them atomically."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
