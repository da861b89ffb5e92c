"""Checkpoint files: atomic under kill -9, reference prefixes, corrupt files, RNG round trip."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ml import checkpoint
from ml.config import load_train_config
from ml.errors import CheckpointError
from ml.model import build_model
from ml.train import main
from tests.peers.trainkit import DEMO, REPO, env, tiny

# Saves a ~32 MB checkpoint in a loop, so a SIGKILL at a random moment nearly always lands mid-write.
WRITER = """
import sys, torch
from ml import checkpoint
big = torch.arange(8_000_000, dtype=torch.float32)
step = 0
while True:
    step += 1
    checkpoint.save({"model_state_dict": {"w": big + step}, "step": step}, sys.argv[1])
    print(step, flush=True)
"""


def _kill_mid_write(proc, folder, rng):
    """SIGKILL ``proc`` while a write is visibly in progress: its temporary file exists and holds part
    of the checkpoint (plus a random few milliseconds, so the kill lands at varying points)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        partial = [p for p in folder.glob(".last.pt.*.tmp") if p.stat().st_size > 0]
        if partial:
            time.sleep(rng.uniform(0, 0.02))
            proc.send_signal(signal.SIGKILL)
            return partial[0]
        time.sleep(0.001)
    raise AssertionError("no write in progress was ever seen")


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_whole(tmp_path):
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env(), cwd=REPO
        )
        try:
            assert proc.stdout.readline().strip()  # one whole save done
            _kill_mid_write(proc, tmp_path, rng)
        finally:
            proc.kill()
            proc.wait()
        ckpt = checkpoint.load(path)  # never raises: the file is always a whole checkpoint
        w = ckpt["model_state_dict"]["w"]
        assert torch.equal(w, torch.arange(8_000_000, dtype=torch.float32) + ckpt["step"])
        for p in tmp_path.glob(".last.pt.*.tmp"):
            p.unlink()


def test_reference_checkpoint_with_prefixes_initialises_the_weights(data, tmp_path, capsys):
    args = tiny(data, tmp_path / "run", 1, "lr_max=0", "lr_max_day=0", "lr_min=0", "lr_min_day=0")
    torch.manual_seed(123)
    model = build_model(load_train_config(DEMO, args))
    state = model.state_dict()
    # torch.compile inside DDP: the reference's keys may carry both wrappers' prefixes.
    prefixes = ("_orig_mod.", "module._orig_mod.")
    prefixed = {prefixes[i % 2] + k: v for i, (k, v) in enumerate(state.items())}
    ref = checkpoint.reference_layout(prefixed, {}, {}, np.float64(0.25), np.float64(1.5))
    torch.save(ref, tmp_path / "best_checkpoint")

    init = [f"init_checkpoint_path={tmp_path / 'best_checkpoint'}", "init_from_checkpoint=true"]
    assert main(["--config", DEMO, *args, *init]) == 0
    assert f"initialised weights from {tmp_path / 'best_checkpoint'}" in capsys.readouterr().out
    trained = checkpoint.load(tmp_path / "run" / "checkpoint" / "last.pt")["model_state_dict"]
    for name, tensor in state.items():
        assert torch.equal(trained[name], tensor), name  # lr 0: the loaded weights are unchanged


def _reference_best_checkpoint(model, path, steps: int, groups: int = 3) -> None:
    """A best_checkpoint as the reference trainer writes it: AdamW over (bias, day, other) groups
    without our "name" keys, a LambdaLR, ``steps`` optimizer steps, DDP/compile key prefixes."""
    named = list(model.named_parameters())
    bias = [p for n, p in named if "gru.bias" in n or "out.bias" in n]
    day = [p for n, p in named if "day_" in n]
    other = [p for n, p in named if "day_" not in n and "gru.bias" not in n and "out.bias" not in n]
    param_groups = [
        {"params": bias, "weight_decay": 0},
        {"params": day, "lr": 0.005, "weight_decay": 0},
        {"params": other},
    ][:groups]
    if groups < 3:
        param_groups[-1]["params"] += other
    opt = torch.optim.AdamW(param_groups, lr=0.005, betas=(0.9, 0.999), eps=0.1, weight_decay=0.001)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: min(1.0, (s + 1) / 2)] * len(param_groups))
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    model_state = {"module._orig_mod." + k: v for k, v in model.state_dict().items()}
    torch.save(
        {
            "model_state_dict": model_state,
            "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(),
            "val_PER": np.float64(0.3),
            "val_loss": np.float64(40.0),
        },
        path,
    )


def test_a_reference_best_checkpoint_resumes_at_its_step_with_its_optimizer_state(data, tmp_path, capsys):
    args = tiny(data, tmp_path / "run", 5)
    model = build_model(load_train_config(DEMO, args))
    _reference_best_checkpoint(model, tmp_path / "best_checkpoint", steps=3)
    assert main(["--config", DEMO, *args, f"resume={tmp_path / 'best_checkpoint'}"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'best_checkpoint'} at step 3 (a reference checkpoint" in out
    assert "Val batch 0:" not in out and "Train batch 3:" not in out and "Val batch 4:" in out
    last = checkpoint.load(tmp_path / "run" / "checkpoint" / "last.pt")
    assert last["step"] == 5 and last["scheduler_state_dict"]["last_epoch"] == 5
    state = last["optimizer_state_dict"]
    assert [g["name"] for g in state["param_groups"]] == ["bias", "day", "other"]
    steps = {float(s["step"]) for s in state["state"].values()}
    assert 5.0 in steps  # Adam's per-parameter step counts continued from the reference's 3


def test_a_reference_checkpoint_whose_optimizer_does_not_fit_is_one_line(data, tmp_path, capsys):
    args = tiny(data, tmp_path / "run", 5)
    model = build_model(load_train_config(DEMO, args))
    _reference_best_checkpoint(model, tmp_path / "ref", steps=1, groups=2)
    assert main(["--config", DEMO, *args, f"resume={tmp_path / 'ref'}"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {tmp_path / 'ref'}: its optimizer state does not fit")
    assert "init_from_checkpoint=true" in err and "\n" not in err
    assert not (tmp_path / "run").exists()

    torch.save(checkpoint.reference_layout(model.state_dict(), {}, {}, 0.5, 1.0), tmp_path / "bare")
    assert main(["--config", DEMO, *args, f"resume={tmp_path / 'bare'}"]) == 4
    assert "cannot be resumed from (no optimizer or scheduler state)" in capsys.readouterr().err


def test_truncated_checkpoint_is_one_line_error_and_left_untouched(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 2)]) == 0
    last = run / "checkpoint" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = last.read_bytes()
    capsys.readouterr()
    assert main(["--config", DEMO, *tiny(data, run, 4)]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {last} cannot be read") and "\n" not in err
    assert last.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04garbage"])
def test_garbage_files_raise_checkpoint_error(tmp_path, content):
    p = tmp_path / "x.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint.load(p)


def test_a_checkpoint_for_another_model_shape_is_one_line(tmp_path):
    torch.save({"model_state_dict": {"w": torch.zeros(3)}}, tmp_path / "other.pt")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        checkpoint.load_weights(model, tmp_path / "other.pt")


def test_strip_prefixes():
    sd = {"_orig_mod.a": 1, "module.b": 2, "module._orig_mod.c": 3, "d": 4}
    assert checkpoint.strip_prefixes(sd) == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_rng_states_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    checkpoint.save({"model_state_dict": {}, "rng": checkpoint.rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
