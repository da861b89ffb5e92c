"""The fits-the-notice check: a real `python -m ml.train` with an s3:// checkpoint_dir on moto,
reached through the test proxy (tests/peers/proxy.py), which adds latency to every S3 request
when the test wants a slow S3. SPOTRUN_NOTICE_S is what the notice watcher sets on a spot
instance; here a 3-second notice stands for the two minutes, so that a 2-second S3 round trip
crosses half of it (the real figures scale: 60 s of save + upload against 120 s); the fast case
has no added latency."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import boto3
import pytest

from common import aws
from ml import checkpoint, notice_fit
from ml.config import NVME_MOUNT
from ml.errors import STOPPED_RESUMABLE
from tests.peers.trainkit import env, make_data, tiny, train_cmd

BUCKET = "spotrun-notice"
URI = f"s3://{BUCKET}/runs/fit"
VERDICT = re.compile(r"checkpoint: save [\d.]+ s, upload ([\d.]+) s of [\d.]+ [MG]B; (.*)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("syn"))


@pytest.fixture
def bucket(aws_env):
    aws.reset_clients()
    client = boto3.client("s3", endpoint_url=aws_env)  # straight to moto: the test's own reads
    client.create_bucket(Bucket=BUCKET)
    yield client
    aws.reset_clients()


def run_until_verdict(data, tmp_path, notice_s: str, *extra: str) -> tuple[str, int, subprocess.Popen]:
    """Start a long run on a spot instance (as the watcher leaves it), wait for the verdict line,
    then send the notice's SIGUSR1; returns (stdout, exit code, the process)."""
    run = tmp_path / "run"
    args = [
        *tiny(data, run, 100_000, "batches_per_val_step=1000000", "save_best_checkpoint=false"),
        f"checkpoint_dir={URI}",
        *extra,
    ]
    out_path = tmp_path / "out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            train_cmd(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env(), notice_fit.NOTICE_ENV: notice_s},
        )
        try:
            end = time.monotonic() + 120
            while not VERDICT.search(out_path.read_text()):
                assert proc.poll() is None, out_path.read_text()[-2000:]
                assert time.monotonic() < end, "no fits-the-notice line:\n" + out_path.read_text()[-2000:]
                time.sleep(0.1)
            proc.send_signal(signal.SIGUSR1)  # the notice, after the check has decided
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return out_path.read_text(), code, proc


def s3_last(bucket, tmp_path) -> dict:
    local = tmp_path / "from-s3.pt"
    bucket.download_file(BUCKET, "runs/fit/last.pt", str(local))
    return checkpoint.load(local)


def stopped_step(out: str) -> int:
    m = re.search(r"stopped by SIGUSR1 at step (\d+); checkpoint saved", out)
    assert m, out[-2000:]
    return int(m.group(1))


def test_slow_upload_says_so_and_the_notice_save_goes_to_nvme(bucket, s3_proxy, data, tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    # Every upload (PUT) waits 2 s: save + upload >= 2 s against a 3 s notice. Reads stay quick.
    s3_proxy.latency_s, s3_proxy.latency_methods = 2.0, {"PUT"}
    out, code, _ = run_until_verdict(data, tmp_path, "3", f"checkpoint_nvme_dir={nvme}")
    assert code == STOPPED_RESUMABLE, out[-2000:]
    assert "the first last.pt's save and upload will be timed against the 3 s interruption notice" in out
    upload_s, verdict = VERDICT.search(out).groups()
    assert float(upload_s) >= 2.0
    staging = nvme / "spotrun" / "checkpoint_staging"
    assert verdict.startswith("more than half of the 3-second notice")
    assert f"from the next save on, checkpoints are staged on the NVMe instance store in {staging}" in verdict
    # The notice's save went to the NVMe folder, and its exit waited for the copy to S3.
    step = stopped_step(out)
    staged = list(staging.glob("*/last.pt"))
    assert len(staged) == 1 and checkpoint.load(staged[0])["step"] == step
    assert s3_last(bucket, tmp_path)["step"] == step
    assert "Traceback" not in out


def test_fast_upload_fits_and_nothing_moves(bucket, s3_proxy, data, tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    # No added latency; a 10 s notice (half: 5 s) keeps a loaded CI machine's own slowness out.
    out, code, _ = run_until_verdict(data, tmp_path, "10", f"checkpoint_nvme_dir={nvme}")
    assert code == STOPPED_RESUMABLE, out[-2000:]
    _upload_s, verdict = VERDICT.search(out).groups()
    assert verdict.startswith("fits the 10-second notice"), out[-2000:]
    assert list(nvme.iterdir()) == []  # the staging stayed in output_dir
    step = stopped_step(out)
    (staged,) = (tmp_path / "run" / ".checkpoint_staging").glob("*/last.pt")
    assert checkpoint.load(staged)["step"] == step
    assert s3_last(bucket, tmp_path)["step"] == step


def test_no_check_off_spot(monkeypatch):
    """No SPOTRUN_NOTICE_S (on-demand, not EC2, no watcher): no check (prepare() builds none)."""
    monkeypatch.delenv(notice_fit.NOTICE_ENV, raising=False)
    assert notice_fit.notice_seconds() is None
    monkeypatch.setenv(notice_fit.NOTICE_ENV, "120")
    assert notice_fit.notice_seconds() == 120


def test_without_nvme_the_line_says_so_and_what_to_do(tmp_path):
    fast, why = notice_fit.fast_disk(NVME_MOUNT)  # nothing is mounted there on this machine
    assert fast is None and why == f"no NVMe instance store is mounted at {NVME_MOUNT} on this instance"
    line = notice_fit.verdict(3.1, 71.0, 1_200_000_000, 120, fast, why)
    assert line == (
        "checkpoint: save 3.1 s, upload 71.0 s of 1.20 GB; more than half of the 2-minute notice "
        f"(74.1 of 120 s): no NVMe instance store is mounted at {NVME_MOUNT} on this instance, so "
        "checkpoints stay staged where they are and a notice may cut the upload short; choose an "
        f"instance type with an instance store (its NVMe is mounted at {NVME_MOUNT}), or set "
        "checkpoint_nvme_dir to a faster local disk"
    )
    assert notice_fit.verdict(3.1, 41.0, 1_200_000_000, 120, fast, why) == (
        "checkpoint: save 3.1 s, upload 41.0 s of 1.20 GB; fits the 2-minute notice (44.1 of 120 s)"
    )
    assert notice_fit.fast_disk(str(tmp_path / "absent"))[0] is None
    assert notice_fit.fast_disk(None) == (None, "checkpoint_nvme_dir is null")


def test_a_failed_first_upload_times_the_next_save_instead():
    said: list[str] = []
    hooks: dict = {}

    class Store:  # what FitCheck uses of CheckpointStore: where to hang the upload's timing
        def on_uploaded(self, name, hook):
            hooks[name] = hook

    fit = notice_fit.FitCheck(120, None, said.append)
    fit.saved(Store(), "last.pt", 1.0)
    hooks.pop("last.pt")(0, 5.0, "HTTP 500")
    assert said == ["checkpoint: save 1.0 s; its upload failed, so the next save is timed instead"]
    fit.saved(Store(), "last.pt", 2.0)
    hooks.pop("last.pt")(50_000_000, 3.0, None)
    assert (
        said[-1] == "checkpoint: save 2.0 s, upload 3.0 s of 50.0 MB; fits the 2-minute notice (5.0 of 120 s)"
    )
    fit.saved(Store(), "last.pt", 2.0)
    assert hooks == {}  # timed once: later saves cost nothing
