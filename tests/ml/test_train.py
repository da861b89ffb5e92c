"""The training loop end to end on tiny synthetic runs: outputs, exact resume, torchrun."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
import yaml

from ml import checkpoint
from ml.config import load_train_config
from ml.data.loader import TrainBatches, open_source
from ml.errors import STOPPED_RESUMABLE
from ml.train import main
from tests.peers.trainkit import DEMO, env, tiny


def test_a_run_writes_logs_metrics_and_checkpoints(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 7)]) == 0
    out = capsys.readouterr().out
    assert "model: " in out and " parameters" in out and "device: cpu" in out
    assert "Train batch 0: loss: " in out and " grad norm: " in out and " time: " in out
    assert "Val batch 0: PER (avg): " in out and "CTC Loss (avg): " in out
    assert "Val batch 6: PER (avg)" in out  # the last batch is always validated
    assert "t15.2023.08.13 val PER: " in out  # per session; session 0 has no val file

    log = (run / "training_log").read_text()
    assert "Train batch 5:" in log and "Val batch 5:" in log
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "split", "loss", "per", "lr", "seconds"]
    assert [(r["step"], r["split"]) for r in rows] == [
        ("0", "train"),
        ("0", "val"),
        ("5", "train"),
        ("5", "val"),
        ("6", "val"),
    ]
    assert all(r["per"] == "" for r in rows if r["split"] == "train")
    assert any((run / "tensorboard").iterdir())

    ckdir = run / "checkpoint"
    last = checkpoint.load(ckdir / "last.pt")
    assert last["step"] == 7 and last["best_per"] is not None
    ref = checkpoint.load(ckdir / "best_checkpoint")
    assert set(ref) == {
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "val_PER",
        "val_loss",
    }
    assert ref["val_PER"] == last["best_per"]
    assert checkpoint.load(ckdir / "best.pt")["val_PER"] == ref["val_PER"]
    saved = yaml.safe_load((ckdir / "args.yaml").read_text())
    assert saved["num_training_batches"] == 7 and saved["model"]["n_units"] == 16
    assert not list(ckdir.glob(".*.tmp"))


def test_twenty_steps_straight_equal_ten_then_resume_ten(data, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["--config", DEMO, *tiny(data, straight, 20)]) == 0
    assert main(["--config", DEMO, *tiny(data, split, 10)]) == 0
    capsys.readouterr()
    assert main(["--config", DEMO, *tiny(data, split, 20)]) == 0
    assert "at step 10" in capsys.readouterr().out

    a = checkpoint.load(straight / "checkpoint" / "last.pt")
    b = checkpoint.load(split / "checkpoint" / "last.pt")
    assert a["step"] == b["step"] == 20
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for name, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][name]), name
    states_a, states_b = a["optimizer_state_dict"]["state"], b["optimizer_state_dict"]["state"]
    for sa, sb in zip(states_a.values(), states_b.values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert a["scheduler_state_dict"]["last_epoch"] == b["scheduler_state_dict"]["last_epoch"] == 20
    assert (a["best_per"], a["best_loss"]) == (b["best_per"], b["best_loss"])


def test_resume_of_a_finished_run_trains_nothing(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 3)]) == 0
    before = (run / "checkpoint" / "last.pt").stat().st_mtime_ns
    assert main(["--config", DEMO, *tiny(data, run, 3)]) == 0
    out = capsys.readouterr().out
    assert "at step 3" in out and "nothing to train" in out
    assert (run / "checkpoint" / "last.pt").stat().st_mtime_ns == before


def test_batches_per_save_and_early_stopping(data, tmp_path, capsys):
    run = tmp_path / "run"
    # lr 0: the PER never improves after the first validation, so training stops at the second miss.
    args = tiny(
        data,
        run,
        40,
        "batches_per_save=3",
        "early_stopping=true",
        "early_stopping_val_steps=2",
        "lr_max=0",
        "lr_max_day=0",
        "lr_min=0",
        "lr_min_day=0",
    )
    assert main(["--config", DEMO, *args]) == 0
    out = capsys.readouterr().out
    assert "Early stopping" in out and "Val batch 10:" in out and "Val batch 15:" not in out
    last = checkpoint.load(run / "checkpoint" / "last.pt")
    assert last["step"] == 11 and last["bad_val_steps"] == 2


def test_torchrun_two_gloo_processes_train_and_checkpoint(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ml.train",
        "--config",
        DEMO,
        *tiny(data, run, 6),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data-parallel over 2 processes" in proc.stdout
    assert proc.stdout.count("model: ") == 1  # only rank 0 reports
    last = checkpoint.load(run / "checkpoint" / "last.pt")
    assert last["step"] == 6 and last["world_size"] == 2 and len(last["rng"]) == 2
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])  # each rank its own noise
    rows = (run / "metrics.csv").read_text().splitlines()
    assert sum(",val," in r for r in rows) == 2  # batch 0 and batch 5, the last


def test_torchrun_ranks_on_different_sessions_share_their_gradients(synthetic_data, tmp_path):
    """One session per batch: each rank's batch leaves other sessions' input layers unused, so DDP
    must accept parameters without gradients, and a layer only the other rank used still moves."""
    run = tmp_path / "ddp"
    sessions = ["t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20"]
    overrides = tiny(
        synthetic_data,
        run,
        4,
        "dataset.sessions=[" + ", ".join(sessions) + "]",
        "dataset.dataset_probability_val=[0, 0, 0, 1]",
        "dataset.days_per_batch=1",
        "dataset.batch_size=2",
        "batches_per_val_step=100",
        "lr_warmup_steps=0",
        "lr_warmup_steps_day=0",
    )
    cfg = load_train_config(DEMO, overrides)
    src = open_source(cfg)
    used = [
        {src.file_day[f] for step in range(4) for f, _ in TrainBatches(src, cfg, 0, rank).plan(step)}
        for rank in (0, 1)
    ]
    assert used[0] != used[1], used  # the ranks do train different sessions

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ml.train",
        "--config",
        DEMO,
        *overrides,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = checkpoint.load(run / "checkpoint" / "last.pt")["model_state_dict"]
    eye = torch.eye(weights["day_weights.0"].shape[0])
    for day in range(4):
        moved = not torch.equal(weights[f"day_weights.{day}"], eye)
        assert moved == (day in used[0] | used[1]), (day, used)


def test_stop_exit_code_is_distinct():
    assert STOPPED_RESUMABLE not in (0, 1, 2, 3, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_with_bf16_autocast_checkpoints_and_resumes(data, tmp_path, capsys):
    run = tmp_path / "gpu"
    gpu = ["device=auto", "use_amp=true"]
    assert main(["--config", DEMO, *tiny(data, run, 6), *gpu]) == 0
    assert "device: cuda" in capsys.readouterr().out
    last = checkpoint.load(run / "checkpoint" / "last.pt")
    assert "cuda" in last["rng"][0] and last["step"] == 6
    assert main(["--config", DEMO, *tiny(data, run, 8), *gpu]) == 0
    assert "at step 6" in capsys.readouterr().out
    assert checkpoint.load(run / "checkpoint" / "last.pt")["step"] == 8
