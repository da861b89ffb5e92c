"""Notices at awkward moments, with the watcher and the real trainer as local processes (no sshd
needed), a local checkpoint folder and `--upload-to` moto's S3: the copy in S3 must be a whole,
consistent checkpoint that the trainer resumes from at the step it stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "batches_per_train_log=1",
    "lr_warmup_steps=1",
    "lr_decay_steps=3000",
    "lr_warmup_steps_day=1",
    "lr_decay_steps_day=3000",
    "use_amp=false",
    "num_threads=1",
    "progress_bar=false",
    "dataset.num_dataloader_workers=0",
]


@pytest.fixture(scope="module")
def val_dataset(tmp_path_factory):
    """Enough validation trials (10 per session) that validation takes a moment."""
    out = tmp_path_factory.mktemp("valdata") / "synthetic"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/make_synthetic_data.py"),
            "--out",
            str(out),
            "--sessions",
            "4",
            "--trials",
            "40",
        ],
        check=True,
        capture_output=True,
    )
    return out


def run_watched(tmp_path: Path, imds, trigger: str, overrides: list[str]) -> tuple[int, str]:
    """Train under the watcher; mark the instance when a stdout line starts with `trigger`."""
    argv = [
        sys.executable,
        "-m",
        "ec2.remote.spot_watch",
        "--run-dir",
        str(tmp_path / "run"),
        "--signal",
        "USR1",
        "--poll",
        "0.1",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--upload-to",
        "s3://moments/ckpt",
        "--",
        sys.executable,
        "-m",
        "ml.train",
        "--config",
        "configs/demo.yaml",
        *TINY,
        *overrides,
        f"output_dir={tmp_path / 'out'}",
        f"checkpoint_dir={tmp_path / 'ckpt'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPOTRUN_IMDS_URL": imds.url}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(trigger) and imds.marked_at is None:
                imds.mark_interruption()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    return code, "".join(lines)


def resume_from_s3(tmp_path: Path, overrides: list[str], total: int) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.train",
            "--config",
            "configs/demo.yaml",
            *TINY,
            *overrides,
            f"num_training_batches={total}",
            f"output_dir={tmp_path / 'out2'}",
            "checkpoint_dir=s3://moments/ckpt",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def stopped_step(output: str) -> int:
    found = re.search(r"stopped by \S+ at step (\d+)", output)
    assert found, output[-3000:]
    return int(found.group(1))


def test_notice_while_checkpoints_are_being_written(imds, aws_env, val_dataset, tmp_path):
    boto3.client("s3").create_bucket(Bucket="moments")
    # A checkpoint after every step: the notice lands in the middle of one being written.
    overrides = [
        f"dataset.dataset_dir={val_dataset}",
        "dataset.batch_size=4",
        "batches_per_save=1",
        "batches_per_val_step=1000",
        "num_training_batches=3000",
    ]
    code, output = run_watched(tmp_path, imds, "Train batch 4:", overrides)
    assert code == 75, output[-3000:]
    step = stopped_step(output)
    assert "preempted: checkpoint secured" in output
    resumed = resume_from_s3(tmp_path, overrides[:-1], step + 2)
    assert "resumed from s3://moments/ckpt" in resumed and f"at step {step}" in resumed


def test_notice_during_validation(imds, aws_env, val_dataset, tmp_path):
    boto3.client("s3").create_bucket(Bucket="moments")
    overrides = [
        f"dataset.dataset_dir={val_dataset}",
        "dataset.batch_size=1",
        "batches_per_val_step=10",
        "num_training_batches=3000",
    ]
    code, output = run_watched(tmp_path, imds, "Train batch 10:", overrides)
    assert code == 75, output[-3000:]
    # The notice arrived after validation began and before its summary line.
    notice_at = output.index("spot interruption notice")
    assert output.index("Train batch 10:") < notice_at
    summary = output.find("Val batch 10:")
    assert summary == -1 or notice_at < summary, output[-3000:]
    step = stopped_step(output)
    resumed = resume_from_s3(tmp_path, overrides[:-1], step + 2)
    assert f"at step {step}" in resumed
