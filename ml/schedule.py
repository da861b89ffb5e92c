"""AdamW with the reference's parameter groups, and its per-group warm-up + decay schedule.

Groups, in the reference's order (so a reference ``optimizer_state_dict`` loads as is), each
carrying a ``"name"`` key:

- ``"bias"``: every bias outside the per-session layers (GRU and output) at ``lr_max``, no weight
  decay;
- ``"day"``: the per-session input layers (``day_weights.*``, ``day_biases.*``) at ``lr_max_day``,
  weight decay ``weight_decay_day``;
- ``"other"``: the rest (GRU and output weights, ``h0``) at ``lr_max``, weight decay ``weight_decay``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ml.config import TrainConfig

GROUP_NAMES = ("bias", "day", "other")
_DAY_MODULES = ("day_weights", "day_biases")


def group_of(name: str) -> str:
    """The group of a parameter name; prefixes such as ``_orig_mod.`` or ``module.`` are fine."""
    parts = name.split(".")
    if any(part in _DAY_MODULES for part in parts):
        return "day"
    if parts[-1].startswith("bias"):
        return "bias"
    return "other"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every parameter of ``model`` (frozen ones included, as the reference), each in
    exactly one group. Group ``lr`` is the peak; ``build_scheduler`` scales it."""
    params: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        params[group_of(name)].append(param)
    groups = [
        {"name": "bias", "params": params["bias"], "lr": cfg.lr_max, "weight_decay": 0.0},
        {"name": "day", "params": params["day"], "lr": cfg.lr_max_day, "weight_decay": cfg.weight_decay_day},
        {"name": "other", "params": params["other"], "lr": cfg.lr_max, "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr_max,
        betas=(cfg.beta0, cfg.beta1),
        eps=cfg.epsilon,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(step: int, warmup: int, decay_steps: int, min_ratio: float, kind: str = "cosine") -> float:
    """Multiplier of the peak lr at ``step``: linear warm-up from 0 over ``warmup`` steps, then
    cosine (or linear) decay from 1 to ``min_ratio`` reached at ``decay_steps``, flat after.

    Matches the reference's lambda: 0 at step 0, 1 at ``warmup``, ``min_ratio`` at ``decay_steps``.
    """
    if kind not in ("cosine", "linear"):
        raise ValueError(f"lr_scheduler_type must be cosine or linear, got {kind!r}")
    if step < warmup:
        return step / max(1, warmup)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup) / max(1, decay_steps - warmup)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return max(min_ratio, min_ratio + (1.0 - min_ratio) * shape)


def _ratio(lr_min: float, lr_max: float) -> float:
    return lr_min / lr_max if lr_max > 0 else 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """One ``lr_factor`` per group, matched by the group's ``"name"``: ``day`` uses the ``*_day``
    keys, ``bias`` and ``other`` the plain ones. Step it after every optimizer step.

    Unlike the reference, ``lr_scheduler_type: linear`` also warms up (the reference's LinearLR
    has no warm-up); with ``lr_warmup_steps: 0`` the two agree.
    """
    kind = cfg.lr_scheduler_type
    plain = partial(
        lr_factor,
        warmup=cfg.lr_warmup_steps,
        decay_steps=cfg.lr_decay_steps,
        min_ratio=_ratio(cfg.lr_min, cfg.lr_max),
        kind=kind,
    )
    day = partial(
        lr_factor,
        warmup=cfg.lr_warmup_steps_day,
        decay_steps=cfg.lr_decay_steps_day,
        min_ratio=_ratio(cfg.lr_min_day, cfg.lr_max_day),
        kind=kind,
    )
    lambdas = [day if group.get("name") == "day" else plain for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
