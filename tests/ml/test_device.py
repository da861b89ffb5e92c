"""The device choice: CUDA, then Apple's GPU (mps), then the CPU; and the MPS CPU fallback set
before torch is imported.

No Mac and no GPU here: which accelerators torch sees is replaced (torch.cuda.is_available,
torch.backends.mps.is_available) where a test needs one; the CPU answers are the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from ml.device import MPS_FALLBACK_VAR, mps_available, pick_device
from ml.distributed import Dist

REPO = Path(__file__).resolve().parents[2]
ONE = Dist()
TWO = Dist(rank=1, world_size=2, local_rank=1)


@pytest.fixture
def seen(monkeypatch):
    """seen(cuda=N, mps=bool): what torch reports."""

    def set_(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_


def test_auto_prefers_cuda_then_apple_gpu_then_cpu(seen):
    seen(cuda=1, mps=True)
    assert pick_device("auto", "0", ONE) == torch.device("cuda", 0)
    seen(cuda=0, mps=True)
    assert pick_device("auto", "1", ONE) == torch.device("mps")
    seen(cuda=0, mps=False)
    assert pick_device("auto", "0", ONE) == torch.device("cpu")


def test_cuda_index_follows_the_rank_or_gpu_number(seen):
    seen(cuda=2)
    assert pick_device("auto", "1", ONE) == torch.device("cuda", 1)
    assert pick_device("auto", "7", ONE) == torch.device("cuda", 0)  # no GPU 7: the first
    assert pick_device("auto", "0", TWO) == torch.device("cuda", 1)


def test_several_processes_on_a_mac_train_on_the_cpu(seen):
    seen(cuda=0, mps=True)
    assert pick_device("auto", "0", TWO) == torch.device("cpu")


def test_explicit_devices_are_checked(seen):
    seen(cuda=0, mps=False)
    assert pick_device("cpu", "0", ONE) == torch.device("cpu")
    with pytest.raises(
        ConfigError, match=r"'mps' asked for, but torch sees no Apple GPU \(mps\); use device=auto"
    ):
        pick_device("mps", "0", ONE)
    with pytest.raises(ConfigError, match="'cuda:0' asked for, but torch sees no CUDA GPU"):
        pick_device("cuda:0", "0", ONE)
    with pytest.raises(ConfigError, match="'gpu' is not a torch device; use auto, cpu, cuda:N or mps"):
        pick_device("gpu", "0", ONE)
    seen(cuda=0, mps=True)
    assert pick_device("mps", "0", ONE) == torch.device("mps")


def test_this_machine_answers_without_stand_ins():
    """The real query works on a torch without Metal (Linux): no Apple GPU, auto is CPU or CUDA."""
    assert mps_available() is False
    assert pick_device("auto", "0", ONE).type == ("cuda" if torch.cuda.is_available() else "cpu")


# Prints the variable at the moment a fresh process starts importing torch (through ml/), then
# stops; a process that never imports torch prints nothing.
SPY = """
import os, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":  # the moment torch would read it; no need to load torch itself
            print(os.environ.get(sys.argv[1], "<unset>"), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
import ml.device
"""


def _fallback_seen_by_a_fresh_trainer(env: dict[str, str]) -> str:
    """The variable as torch sees it when a fresh `python -m ml.train` process imports it."""
    code = SPY
    proc = subprocess.run(
        [sys.executable, "-c", code, MPS_FALLBACK_VAR],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )
    return proc.stdout.strip()


def test_mps_fallback_is_on_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k != MPS_FALLBACK_VAR}
    assert _fallback_seen_by_a_fresh_trainer(env) == "1"
    # A user's own choice stands.
    assert _fallback_seen_by_a_fresh_trainer({**env, MPS_FALLBACK_VAR: "0"}) == "0"
