"""Which trials make each batch (the reference's rules), and how a batch is padded into tensors.

Plans are lists of ``(file id, trial)``; they depend only on the generator and the trial lists,
so a batch is a pure function of (seed, step, rank) and the data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ml.data.index import TrialIndex


def train_plan(
    rng: np.random.Generator,
    files: list[int],
    trials: list[np.ndarray],
    days_per_batch: int,
    batch_size: int,
    must_include: list[int] | None = None,
) -> list[tuple[int, int]]:
    """``days_per_batch`` sessions uniformly without replacement (``must_include`` always among
    them), ceil(batch_size / days) trials from each with replacement, trimmed to ``batch_size``.

    ``files[s]`` is session s's train file id, ``trials[s]`` its usable trial numbers."""
    usable = [s for s, t in enumerate(trials) if len(t)]
    days = min(days_per_batch, len(usable))
    must = [s for s in (must_include or []) if s in usable][:days]
    rest = [s for s in usable if s not in must]
    picked = must + [int(s) for s in rng.choice(rest, size=days - len(must), replace=False)]
    per_day = math.ceil(batch_size / days)
    plan = []
    for s in picked:
        for t in rng.choice(trials[s], size=per_day, replace=True):
            plan.append((files[s], int(t)))
    return plan[:batch_size]


def val_plans(
    files: list[int | None], trials: list[np.ndarray], batch_size: int
) -> list[list[tuple[int, int]]]:
    """Sequential: one session per batch, at most ``batch_size`` trials, every trial once.
    Sessions with no val file (``files[s]`` None) are skipped."""
    plans = []
    for f, t in zip(files, trials, strict=True):
        if f is None:
            continue
        for start in range(0, len(t), batch_size):
            plans.append([(f, int(i)) for i in t[start : start + batch_size]])
    return plans


def usable_trials(index: TrialIndex, bad: dict | None) -> np.ndarray:
    """Trial numbers in ``index`` minus those in ``bad`` ({block_num: [trial_num, ...]})."""
    keep = np.ones(len(index), dtype=bool)
    for block, trial_nums in (bad or {}).items():
        hit = (index.block_num == int(block)) & np.isin(index.trial_num, [int(t) for t in trial_nums])
        keep &= ~hit
    return np.flatnonzero(keep)


def collate(
    features: list[np.ndarray],
    rows: list[tuple[TrialIndex, int, int]],
    feature_subset: list[int] | None,
) -> dict[str, torch.Tensor]:
    """Pad features with zeros to the longest trial; ``rows`` are (index, trial, day index)."""
    if feature_subset:
        features = [x[:, feature_subset] for x in features]
    longest = max(x.shape[0] for x in features)
    n_features = features[0].shape[1]
    padded = np.zeros((len(features), longest, n_features), np.float32)
    for b, x in enumerate(features):
        padded[b, : x.shape[0]] = x

    def ints(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.int64))

    return {
        "input_features": torch.from_numpy(padded),
        "seq_class_ids": ints([ix.seq_class_ids[i] for ix, i, _ in rows]),
        "n_time_steps": ints([x.shape[0] for x in features]),
        "phone_seq_lens": ints([ix.seq_len[i] for ix, i, _ in rows]),
        "day_indices": ints([d for _, _, d in rows]),
        "block_nums": ints([ix.block_num[i] for ix, i, _ in rows]),
        "trial_nums": ints([ix.trial_num[i] for ix, i, _ in rows]),
        "transcriptions": ints([ix.transcription[i] for ix, i, _ in rows]),
    }
