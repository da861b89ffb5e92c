"""An s3:// checkpoint_dir against moto's server over HTTP: staged locally, copied up in the
background, awaited at exit (also after a stop signal); resume=auto downloads the newest last.pt."""

from __future__ import annotations

import os
import signal

import boto3
import pytest

from common import aws
from ml import checkpoint
from ml.errors import STOPPED_RESUMABLE
from ml.train import main
from tests.peers.trainkit import DEMO, tiny

BUCKET = "spotrun-ckpt"


@pytest.fixture
def s3(aws_env):
    aws.reset_clients()  # clients made before aws_env pointed the environment at moto
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    aws.reset_clients()


def _load_from_bucket(s3, key, tmp_path):
    local = tmp_path / key.replace("/", "_")
    s3.download_file(BUCKET, key, str(local))
    return checkpoint.load(local)


def test_s3_checkpoint_dir_uploads_and_resume_auto_reads_it_back(s3, data, tmp_path, capsys, monkeypatch):
    uri = f"s3://{BUCKET}/runs/a"
    args = [*tiny(data, tmp_path / "one", 6), f"checkpoint_dir={uri}"]
    assert main(["--config", DEMO, *args]) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {"runs/a/last.pt", "runs/a/best.pt", "runs/a/best_checkpoint", "runs/a/args.yaml"} <= keys
    assert _load_from_bucket(s3, "runs/a/last.pt", tmp_path)["step"] == 6
    capsys.readouterr()

    # A fresh machine (empty output_dir, so an empty staging folder) resumes from the bucket; a stop
    # signal during its first save still leaves that checkpoint in the bucket before exit 75.
    real_save = checkpoint.save

    def save_with_signal(obj, path):
        if path.name == "last.pt":
            os.kill(os.getpid(), signal.SIGUSR1)
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "save", save_with_signal)
    args = [*tiny(data, tmp_path / "two", 20, "batches_per_save=2"), f"checkpoint_dir={uri}"]
    assert main(["--config", DEMO, *args]) == STOPPED_RESUMABLE
    out = capsys.readouterr().out
    assert f"resumed from {uri}/last.pt at step 6" in out
    assert "stopped by SIGUSR1 at step 8; checkpoint saved" in out
    assert _load_from_bucket(s3, "runs/a/last.pt", tmp_path)["step"] == 8


def test_missing_bucket_is_one_line_before_training(aws_env, data, tmp_path, capsys):
    aws.reset_clients()
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 2), "checkpoint_dir=s3://no-such-bucket/x"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint_dir s3://no-such-bucket/x") and "NoSuchBucket" in err
    assert "\n" not in err and not run.exists()
    aws.reset_clients()
