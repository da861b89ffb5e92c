"""The training device: a CUDA GPU on an instance, Apple's GPU (`mps`) on a Mac, else the CPU.

On `mps`, an op PyTorch has no Metal kernel for runs on the CPU instead of failing the run when
PYTORCH_ENABLE_MPS_FALLBACK=1. torch reads that variable once, when it is imported (the fallback
kernel is registered then: aten/src/ATen/mps/MPSFallback.mm), so `ml/__init__.py` sets it before
anything in ml/ imports torch; a value the user set is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from common.errors import ConfigError

if TYPE_CHECKING:
    from ml.distributed import Dist

MPS_FALLBACK_VAR = "PYTORCH_ENABLE_MPS_FALLBACK"


def mps_available() -> bool:
    """Apple's GPU through Metal, in a torch built with it (macOS 12.3+ on Apple silicon)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(setting: str, gpu_number: str, d: Dist) -> torch.device:
    """``auto``: CUDA when present (the local rank's GPU under torchrun, else gpu_number when that
    GPU exists, else GPU 0), then Apple's GPU (one process only: DDP's gloo does not take mps
    tensors), otherwise the CPU. Any other value is used as written, once checked."""
    if setting != "auto":
        try:
            device = torch.device(setting)
        except RuntimeError:
            raise ConfigError(
                f"device {setting!r} is not a torch device; use auto, cpu, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {setting!r} asked for, but torch sees no CUDA GPU; use device=auto")
        if device.type == "mps" and not mps_available():
            raise ConfigError(
                f"device {setting!r} asked for, but torch sees no Apple GPU (mps); use device=auto"
            )
        return device
    if torch.cuda.is_available():
        if d.enabled:
            return torch.device("cuda", d.local_rank)
        try:
            index = int(gpu_number)
        except ValueError:
            index = 0
        # The reference file says gpu_number '1' (a two-GPU workstation); one-GPU instances have 0.
        return torch.device("cuda", index if 0 <= index < torch.cuda.device_count() else 0)
    if mps_available() and not d.enabled:
        return torch.device("mps")
    return torch.device("cpu")
