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
from tests.ml.trainkit import DEMO, REPO, env, make_data, tiny

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
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=env(), cwd=REPO)  # fmt: skip
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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("syn"))


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


def test_a_reference_checkpoint_cannot_be_resumed_from_and_says_what_to_do(data, tmp_path, capsys):
    args = tiny(data, tmp_path / "run", 1)
    model = build_model(load_train_config(DEMO, args))
    torch.save(checkpoint.reference_layout(model.state_dict(), {}, {}, 0.5, 1.0), tmp_path / "ref")
    assert main(["--config", DEMO, *args, f"resume={tmp_path / 'ref'}"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint ") and "init_from_checkpoint=true" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


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
