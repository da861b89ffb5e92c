"""How much memory a model would need, from its config, before it is built: a model that cannot
fit is refused with one line saying how large it would be, instead of being allocated (and the
machine swapping, or the process killed) before anything else is checked.

Parameters are counted exactly as ml.model.GRUDecoder lays them out (a test checks the count
against the built model). Training holds, per parameter, the weight, its gradient and AdamW's two
moments: 16 bytes in float32. Activations are estimated for one batch of the longest trials of
the release (1,025 bins, docs: /work/shared/design/data-format.md): the stacked per-session
weights of the batch, the day-layer outputs, the patches, the GRU's saved gates and outputs and
the logits; a rough figure, so a model is refused only when even this estimate does not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ml.config import TrainConfig
from ml.errors import ConfigError

LONGEST_TRIAL_BINS = 1025
BYTES = 4  # float32 (bf16 autocast saves some activations in half: this stays an upper estimate)
TRAIN_BYTES_PER_PARAM = 16  # weight, gradient, AdamW exp_avg and exp_avg_sq


def parameter_count(cfg: TrainConfig) -> int:
    m, features = cfg.model, cfg.n_features
    n_days, hidden, classes = len(cfg.dataset.sessions), m.n_units, cfg.dataset.n_classes
    day = n_days * (features * features + features)
    inputs = features * m.patch_size if m.patch_size > 0 else features
    gru = sum(
        3 * hidden * ((inputs if layer == 0 else hidden) + hidden) + 6 * hidden for layer in range(m.n_layers)
    )
    return day + gru + hidden * classes + classes + hidden


def activation_bytes(cfg: TrainConfig) -> int:
    m, features, batch = cfg.model, cfg.n_features, cfg.dataset.batch_size
    bins = LONGEST_TRIAL_BINS
    steps = (bins - m.patch_size) // m.patch_stride + 1 if m.patch_size > 0 else bins
    inputs = features * m.patch_size if m.patch_size > 0 else features
    per_trial = (
        features * features  # this batch's session weights, stacked per trial
        + 3 * bins * features  # day layer, softsign, dropout
        + steps * inputs  # the patches
        + m.n_layers * steps * m.n_units * 6  # GRU gates and outputs kept for backward
        + 3 * steps * cfg.dataset.n_classes  # logits, log-softmax, their gradient
    )
    return BYTES * batch * per_trial


@dataclass(frozen=True)
class Estimate:
    parameters: int
    train_bytes: int  # parameters with gradients and optimizer state, and one batch's activations


def estimate(cfg: TrainConfig) -> Estimate:
    params = parameter_count(cfg)
    return Estimate(params, params * TRAIN_BYTES_PER_PARAM + activation_bytes(cfg))


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """Free memory where the model would live, and what that is; None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {torch.cuda.get_device_name(device)}"
    available = _meminfo_available()
    if available is not None:
        return available, "available RAM"
    try:  # other Unixes: the pages the kernel could hand out now
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM"
    except (ValueError, OSError, AttributeError):
        return None, ""


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """Linux's MemAvailable: free pages plus the page cache it can drop. Not MemFree (what
    SC_AVPHYS_PAGES reports): after a dataset has been read once, the cache holds most of the RAM
    and MemFree alone would refuse a model that fits."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_fits(cfg: TrainConfig, device: torch.device) -> Estimate:
    """ConfigError when the model, trained, would not fit in ``device``'s free memory."""
    est = estimate(cfg)
    free, where = available_bytes(device)
    if free is not None and est.train_bytes > free:
        m = cfg.model
        raise ConfigError(
            f"the model would not fit: {est.parameters:,} parameters (model.n_units {m.n_units}, "
            f"n_layers {m.n_layers}, {len(cfg.dataset.sessions)} sessions), about {_gb(est.train_bytes)} "
            f"to train with dataset.batch_size {cfg.dataset.batch_size}, and {_gb(free)} is {where}; "
            "make model.n_units, model.n_layers or dataset.batch_size smaller"
        )
    return est
