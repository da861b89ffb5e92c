"""Greedy CTC decoding, edit distance, PER accumulation."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from ml.metrics import PerTracker, edit_distance, greedy_decode, labels_to_lists

torch.set_num_threads(1)


def logits_for(paths: list[list[int]], n_classes: int = 6) -> torch.Tensor:
    """Logits whose argmax at step t of trial b is paths[b][t] (trials padded with blanks)."""
    steps = max(len(p) for p in paths)
    logits = torch.randn(len(paths), steps, n_classes) * 0.1
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            logits[b, t, c] = 5.0
        for t in range(len(path), steps):
            logits[b, t, 0] = 5.0
    return logits


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    paths = [
        [1, 1, 2, 2, 2, 3],  # repeats collapse
        [0, 1, 0, 1, 1, 0],  # a blank between equal ids keeps both
        [0, 0, 0, 0, 0, 0],  # all blank
        [4, 0, 0, 4, 5, 5],
    ]
    lengths = torch.tensor([6, 6, 6, 6])
    assert greedy_decode(logits_for(paths), lengths) == [[1, 2, 3], [1, 1], [], [4, 4, 5]]


def test_greedy_decode_stops_at_each_trials_length():
    paths = [[1, 2, 3, 4], [1, 1, 2, 2]]
    got = greedy_decode(logits_for(paths), torch.tensor([2, 3]))
    assert got == [[1, 2], [1, 2]]
    assert greedy_decode(logits_for(paths), torch.tensor([0, 99])) == [[], [1, 2]]


def test_labels_to_lists_trims_padding():
    ids = torch.tensor([[9, 34, 40, 0, 0], [5, 0, 7, 0, 0]], dtype=torch.int32)
    assert labels_to_lists(ids, torch.tensor([3, 3])) == [[9, 34, 40], [5, 0, 7]]


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ([], [], 0),
        ([1, 2, 3], [], 3),
        ([], [4, 5], 2),
        ([1, 2, 3], [1, 2, 3], 0),
        ([1, 2, 3], [1, 3], 1),  # deletion
        ([1, 3], [1, 2, 3], 1),  # insertion
        ([1, 2, 3], [1, 4, 3], 1),  # substitution
        ([1, 2, 3, 4], [2, 3, 4, 1], 2),
        (list("kitten"), list("sitting"), 3),
        (list("flaw"), list("lawn"), 2),
    ],
)
def test_edit_distance_known_cases(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def brute_force(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Plain recursive definition, memoised: obviously right, slow."""
    memo: dict[tuple[int, int], int] = {}

    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        if (i, j) not in memo:
            memo[(i, j)] = min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
        return memo[(i, j)]

    return d(len(a), len(b))


def test_edit_distance_against_brute_force():
    rng = random.Random(0)
    for _ in range(400):
        a = tuple(rng.randrange(4) for _ in range(rng.randrange(8)))
        b = tuple(rng.randrange(4) for _ in range(rng.randrange(8)))
        assert edit_distance(a, b) == brute_force(a, b), (a, b)
    # Every pair of short binary strings, too.
    words = [w for n in range(4) for w in itertools.product((1, 2), repeat=n)]
    for a, b in itertools.product(words, words):
        assert edit_distance(a, b) == brute_force(a, b)


def test_per_tracker_overall_and_per_day():
    tracker = PerTracker()
    assert tracker.overall() == 0.0 and tracker.per_day() == {}
    tracker.add([[1, 2, 3], [4]], [[1, 2, 3], [4, 5]], [3, 1])  # 0/3 on day 3, 1/2 on day 1
    tracker.add([[9, 9, 9, 9]], [[1]], torch.tensor([3]))  # 4/1 on day 3
    assert (tracker.edits, tracker.length) == (5, 6)
    assert tracker.overall() == pytest.approx(5 / 6)
    assert tracker.per_day() == {1: pytest.approx(0.5), 3: pytest.approx(4 / 4)}
    assert list(tracker.per_day()) == [1, 3]


def test_per_can_exceed_one():
    tracker = PerTracker()
    tracker.add([[1, 2, 1, 2, 1]], [[3, 3]], [0])
    assert tracker.overall() == pytest.approx(5 / 2)


def test_per_tracker_refuses_mismatched_lists():
    with pytest.raises(ValueError, match="must match"):
        PerTracker().add([[1]], [[1], [2]], [0, 0])


def test_decode_then_track_end_to_end():
    paths = [[0, 7, 7, 0, 8], [3, 0, 3, 3, 0]]
    labels = torch.tensor([[7, 8, 0, 0], [3, 3, 3, 0]])
    tracker = PerTracker()
    tracker.add(
        greedy_decode(logits_for(paths, 10), torch.tensor([5, 5])),
        labels_to_lists(labels, torch.tensor([2, 3])),
        [0, 1],
    )
    assert tracker.per_day() == {0: 0.0, 1: pytest.approx(1 / 3)}
