"""What a detached run's boot notes of its attempt from the files on the instance (the boot itself,
against moto, is tests/remote/test_boot.py): the resume line is found however the log's writes cut
it, and once; the notice and the seconds to safe come from the watcher's records."""

from __future__ import annotations

import json
import time

from common.attempt import Attempt
from ec2.remote.attempt_notes import ResumeWatch, note_end


def test_the_resume_line_is_noted_once_whole_however_the_log_grows(tmp_path):
    log = tmp_path / "log"
    before = Attempt(1, notice_seen_at=time.time() - 12)
    now = Attempt(2)
    watch = ResumeWatch(log)
    assert not watch.check(now, before)  # no log yet
    log.write_text("Train batch 1: loss 2\nresumed from s3://b/ck/last.pt at st")
    assert not watch.check(now, before)  # the line is still being written
    with log.open("a") as f:
        f.write("ep 40\nTrain batch 41: loss 1\n")
    assert watch.check(now, before)
    assert now.resumed_step == 40 and 12 <= now.seconds_notice_to_resumed < 60
    with log.open("a") as f:
        f.write("resumed from s3://b/ck/last.pt at step 99\n")
    assert not watch.check(now, before) and now.resumed_step == 40  # noted once: saved once


def test_note_end_takes_the_last_step_and_the_watchers_notice_records(tmp_path):
    (tmp_path / "log").write_text("Train batch 11: loss 1\nstopped by SIGUSR1 at step 12\n")
    (tmp_path / "notice").write_text(json.dumps({"seen_at": 1700000000.5}))
    (tmp_path / "preempted").write_text(json.dumps({"seen_at": 1700000000.5, "seconds_notice_to_safe": 4.2}))
    a = Attempt(1)
    note_end(a, tmp_path)
    assert (a.last_step, a.notice_seen_at, a.seconds_notice_to_safe) == (12, 1700000000.5, 4.2)
    quiet = Attempt(2)
    (tmp_path / "notice").unlink()
    (tmp_path / "preempted").unlink()
    note_end(quiet, tmp_path)  # no notice: nothing of one noted
    assert (quiet.last_step, quiet.notice_seen_at, quiet.seconds_notice_to_safe) == (12, None, None)
