"""Data that cannot train, found before it does: each check names the file and the trial.

A trial whose labels are missing or disagree with ``seq_len``, or which is too short for CTC to
align its phonemes, gives an infinite loss; a NaN or inf feature gives a NaN gradient. Either
used to train on silently until every saved tensor was NaN.

- ``check_labels`` runs when a train or val file is opened, on its trial index (labels and
  lengths are already there; no feature is read), so it costs milliseconds even on the release.
- ``check_finite`` runs on each batch's features as they are read (in the DataLoader workers),
  since reading every feature up front would cost a pass over the whole dataset.
"""

from __future__ import annotations

import numpy as np

from ml.data.index import LABEL_LEN, TrialIndex
from ml.data.trials import group_name
from ml.errors import DataError

_FIX = "fix the file, or leave the trial out with dataset.bad_trials_dict"


def ctc_lengths(rows: np.ndarray, patch_size: int, patch_stride: int) -> np.ndarray:
    """CTC input lengths for trials of ``rows`` bins (as ml.model.output_lengths, in numpy)."""
    rows = np.asarray(rows, np.int64)
    if patch_size <= 0:
        return rows
    return np.maximum((rows - patch_size) // max(1, patch_stride) + 1, 0)


def check_labels(
    index: TrialIndex,
    trials: np.ndarray,
    *,
    n_classes: int,
    patch_size: int,
    patch_stride: int,
    max_cut: int = 0,
) -> None:
    """Every trial in ``trials`` has labels that agree with its ``seq_len`` and that CTC can align
    in its length (after a random cut of up to ``max_cut`` bins). DataError names the first bad
    trial and how many more share its problem."""
    if len(trials) == 0:
        return
    t = np.asarray(trials, np.int64)
    seq_len = index.seq_len[t]
    # Only the label slots some trial uses (CTC reads the first seq_len ids; the rest is padding).
    width = int(min(LABEL_LEN, max(1, seq_len.max())))
    ids = index.seq_class_ids[t, :width]
    pos = np.arange(width)
    inside = pos[None, :] < seq_len[:, None]
    # CTC needs one output step per label, plus one between two equal neighbours (a blank).
    repeats = ((ids[:, 1:] == ids[:, :-1]) & inside[:, 1:]).sum(axis=1)
    steps = ctc_lengths(index.rows[t] - max_cut, patch_size, patch_stride)
    n_ids = (ids != 0).sum(axis=1)
    problems = [
        (
            (seq_len <= 0) & (n_ids == 0),
            lambda i: "has no labels (no seq_class_ids, seq_len 0 or missing); is it a test file?",
        ),
        ((seq_len <= 0) & (n_ids > 0), lambda i: f"has seq_class_ids but seq_len {seq_len[i]}"),
        (
            (seq_len > 0) & (n_ids == 0),
            lambda i: f"has seq_len {seq_len[i]} but no seq_class_ids (no phoneme ids)",
        ),
        (seq_len > LABEL_LEN, lambda i: f"has seq_len {seq_len[i]}, more than the {LABEL_LEN} label slots"),
        (
            ((ids == 0) & inside).any(axis=1),
            lambda i: (
                f"has seq_len {seq_len[i]} but only {n_ids[i]} phoneme ids in seq_class_ids "
                "(blank 0 inside the label)"
            ),
        ),
        (
            ((ids < 0) | (ids >= n_classes)).any(axis=1),
            lambda i: (
                f"has phoneme ids outside 0..{n_classes - 1} in seq_class_ids (dataset.n_classes is "
                f"{n_classes})"
            ),
        ),
        (
            steps < seq_len + repeats,
            lambda i: (
                f"has {seq_len[i]} phonemes but only {steps[i]} output steps ({index.rows[t[i]]} bins"
                + (f" less a random cut of up to {max_cut}" if max_cut else "")
                + f", patch {patch_size}/{patch_stride}); CTC cannot align it"
            ),
        ),
    ]
    for bad, describe in problems:
        hits = np.flatnonzero(bad)
        if len(hits):
            i = int(hits[0])
            more = f"; so do {len(hits) - 1} more trials" if len(hits) > 1 else ""
            raise DataError(f"{index.uri}: {trial_name(index, int(t[i]))} {describe(i)}{more}; {_FIX}")


def check_finite(features: list[np.ndarray], plan: list[tuple[int, int]], indices: list[TrialIndex]) -> None:
    """Every feature of the batch is finite; else DataError naming the file and trial."""
    for x, (f, i) in zip(features, plan, strict=True):
        # One sum is ~3x cheaper than isfinite().all() and is NaN/inf whenever an element is
        # (it can also overflow on huge finite values: the exact test below decides).
        if not np.isfinite(x.sum()) and not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise DataError(
                f"{indices[f].uri}: {trial_name(indices[f], i)} input_features holds non-finite "
                f"values (NaN or inf) in {bad} of {x.shape[0]} time bins; {_FIX}"
            )


def trial_name(index: TrialIndex, i: int) -> str:
    """``trial_0012 (block 3, trial_num 4)``: the group, and the keys dataset.bad_trials_dict takes."""
    return f"{group_name(i)} (block {int(index.block_num[i])}, trial_num {int(index.trial_num[i])})"
