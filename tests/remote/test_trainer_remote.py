"""The real trainer in tmux on the sshd host: train → logs → finished(0) → download → resume here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from invoke import Context

from ec2.remote import runs
from ec2.remote.ssh import Machine
from tasks import remote as t
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
TINY = [
    *TINY_TRAIN,
    "num_training_batches=4",
    "batches_per_val_step=4",
    "lr_decay_steps=4",
    "lr_decay_steps_day=4",
    "output_dir=trained_models/remote_t",
    "checkpoint_dir=trained_models/remote_t/checkpoint",
]


def test_real_trainer_in_tmux_then_download_and_resume_locally(sshd, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(REPO)  # `fab sync` sends the current project
    sshd.record(name="box")
    m = Machine(sshd.record(name="box"))
    c = Context()
    t.setup(c, name="box", python=str(REPO / ".venv/bin/python"), no_gpu=True)
    code = runs.code_dir(m.record.remote_dir)
    m.run(
        f"cd {code} && {REPO}/.venv/bin/python scripts/make_synthetic_data.py --out data/synthetic "
        "--sessions 4 --trials 6"
    )
    capfd.readouterr()

    t.train(c, name="box", train_config="configs/demo.yaml", args=" ".join(TINY))
    end = time.monotonic() + 120
    while (state := runs.run_state(m, "train")).state == "running" and time.monotonic() < end:
        time.sleep(1)
    t.logs(c, name="box", no_follow=True, lines=200)
    log = capfd.readouterr().out
    assert str(state) == "finished(0)", log
    assert "Train batch" in log or "train" in log.lower()

    monkeypatch.chdir(tmp_path)
    t.download(c, name="box")
    ckpt = tmp_path / "outputs" / "box" / "checkpoint"
    assert (ckpt / "last.pt").exists() and (tmp_path / "outputs" / "box" / "run" / "log").exists()

    data = tmp_path / "synthetic"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/make_synthetic_data.py"),
            "--out",
            str(data),
            "--sessions",
            "4",
            "--trials",
            "6",
        ],
        check=True,
    )
    local = [o for o in TINY if not o.startswith(("output_dir", "checkpoint_dir", "num_training"))]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.train",
            "--config",
            str(REPO / "configs/demo.yaml"),
            *local,
            "num_training_batches=6",
            f"dataset.dataset_dir={data}",
            f"output_dir={tmp_path / 'local'}",
            f"checkpoint_dir={ckpt}",
            "resume=auto",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout and "at step 4" in proc.stdout
