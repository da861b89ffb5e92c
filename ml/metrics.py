"""Validation metrics: greedy CTC decoding, edit distance, phoneme error rate (PER).

PER = total edit distance / total label length, over all trials (not a mean of per-trial rates),
overall and per session, as the reference reports it. It can exceed 1 (an untrained model that
emits many phonemes scores ~1.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BLANK = 0


def greedy_decode(logits: Tensor, lengths: Tensor) -> list[list[int]]:
    """Best path per trial: argmax per step over the first ``lengths[b]`` steps, repeats collapsed,
    blanks (0) dropped. A blank between two equal ids keeps both ("a _ a" -> [a, a]).

    logits (B, T, C) on any device; lengths (B,) ints, clamped to [0, T]. One transfer to the CPU.
    """
    best = logits.argmax(dim=-1)  # (B, T)
    steps = best.shape[1]
    lengths = torch.as_tensor(lengths, device=best.device).to(torch.int64).clamp(0, steps)
    # Keep a step when it is inside the trial, not blank, and differs from the step before it.
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    inside = torch.arange(steps, device=best.device).unsqueeze(0) < lengths.unsqueeze(1)
    keep = (changed & (best != BLANK) & inside).cpu()
    best = best.cpu()
    return [row[mask].tolist() for row, mask in zip(best, keep, strict=True)]


def labels_to_lists(seq_class_ids: Tensor, seq_lens: Tensor) -> list[list[int]]:
    """The first ``seq_lens[b]`` ids of each zero-padded label row, as lists for ``PerTracker``."""
    ids = seq_class_ids.cpu().tolist()
    lens = torch.as_tensor(seq_lens).cpu().tolist()
    return [row[: int(n)] for row, n in zip(ids, lens, strict=True)]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (unit insert, delete, substitute) between two id sequences."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _rate(edits: int, length: int) -> float:
    if length:
        return edits / length
    # No label phonemes: perfect if nothing was predicted either, otherwise unbounded.
    return 0.0 if edits == 0 else float("inf")


class PerTracker:
    """Accumulates edit distances and label lengths over a validation pass, overall and per
    session index. ``edits`` / ``length`` are the running totals."""

    def __init__(self) -> None:
        self.edits = 0
        self.length = 0
        self._day_edits: dict[int, int] = {}
        self._day_length: dict[int, int] = {}

    def add(self, predictions: list[list[int]], labels: list[list[int]], day_indices: Sequence[int]) -> None:
        if not len(predictions) == len(labels) == len(day_indices):
            raise ValueError(
                f"PerTracker.add got {len(predictions)} predictions, {len(labels)} labels and "
                f"{len(day_indices)} day indices; they must match"
            )
        for pred, label, day in zip(predictions, labels, day_indices, strict=True):
            day = int(day)
            edits = edit_distance(pred, label)
            self.edits += edits
            self.length += len(label)
            self._day_edits[day] = self._day_edits.get(day, 0) + edits
            self._day_length[day] = self._day_length.get(day, 0) + len(label)

    def overall(self) -> float:
        """Total edits / total label length; 0.0 before anything was added."""
        return _rate(self.edits, self.length)

    def per_day(self) -> dict[int, float]:
        """PER of each session index seen, in ascending index order."""
        return {day: _rate(self._day_edits[day], self._day_length[day]) for day in sorted(self._day_edits)}
