"""`fab status` and `fab watch` on a detached run read each attempt's log from S3 for its ledger
(ec2/journey/standing.note_logs): the step it resumed at, its last step and the trainer's S3 read
line. A long run's log is megabytes; only its two ends are read (ec2/remote/detached.get_ends), in
ranged GETs against moto's S3 server."""

from __future__ import annotations

import boto3
import pytest

from common.attempt import Attempt
from ec2.journey import standing
from ec2.remote import detached

BUCKET = "spot-runs"
S3_LINE = "read from S3: 1,234 GETs, 10.52 GB, $0.000494 in requests"


@pytest.fixture
def s3(aws_env):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    read: list[int] = []  # the bytes of each GET that answered

    def count(parsed=None, **_) -> None:
        if "ContentLength" in (parsed or {}):
            read.append(int(parsed["ContentLength"]))

    client.meta.events.register("after-call.s3.GetObject", count)
    client.read = read
    return client


def _log(s3, key: str, text: str) -> Attempt:
    s3.put_object(Bucket=BUCKET, Key=key, Body=text.encode())
    return Attempt(1, log_uri=f"s3://{BUCKET}/{key}")


def test_a_long_logs_ledger_comes_from_its_two_ends(s3):
    """A 6 MB log (the tqdm-less trainer prints a line per batch): resumed at 40, last step 99,999,
    and the S3 line at its very end; two GETs of 256 KiB read them."""
    head = "setting up\nresumed from s3://b/ckpt/last.pt at step 40\n"
    batches = "".join(f"Train batch {n}: loss 1.25 grad_norm 0.5 lr 0.001\n" for n in range(40, 100_000))
    a = _log(s3, "logs/attempt-1.log", head + batches + S3_LINE + "\n")
    standing.note_logs(s3, [a])
    assert (a.resumed_step, a.last_step) == (40, 99_999)
    assert (a.s3_gets, a.s3_gb, a.s3_request_usd) == (1234, 10.52, 0.000494)
    assert s3.read == [detached.LOG_END_BYTES, detached.LOG_END_BYTES]


def test_the_cut_between_the_ends_never_makes_a_step_of_half_a_line(s3):
    """Each end keeps whole lines only: a line cut at the end of the head ("Train batch 12" of
    "Train batch 123456") is dropped, not read as step 12."""
    size = 4096
    filler = "x" * (size - len("Train batch 12")) + "Train batch 123456: loss 1\n"
    text = filler + "y\n" * 5000
    _log(s3, "logs/cut.log", text)
    ends = detached.get_ends(s3, f"s3://{BUCKET}/logs/cut.log", size=size)
    first, _, last = ends.partition("\n...\n")
    assert "Train batch" not in first and "Train batch" not in last
    assert len(ends.encode()) < 2 * size


def test_a_short_log_is_read_whole_in_one_get_and_an_empty_one_is_empty(s3):
    text = "resumed from s3://b/ckpt/last.pt at step 3\nTrain batch 4: loss 1\n" + S3_LINE + "\n"
    a = _log(s3, "logs/short.log", text)
    assert detached.get_ends(s3, a.log_uri) == text
    standing.note_logs(s3, [a])
    assert (a.resumed_step, a.last_step, a.s3_gets) == (3, 4, 1234)
    assert len(s3.read) == 2  # one GET each time
    empty = _log(s3, "logs/empty.log", "")
    assert detached.get_ends(s3, empty.log_uri) == ""
    standing.note_logs(s3, [empty])
    assert empty.last_step is None
    assert detached.get_ends(s3, f"s3://{BUCKET}/logs/missing.log") is None
