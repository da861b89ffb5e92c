"""The suite's order (tests/peers/order.py): a permutation whatever the selection, with each
worker's share starting with its journeys."""

from __future__ import annotations

import pytest

from tests.peers.order import journeys_first, share_sizes


@pytest.mark.parametrize(
    ("journeys", "others", "workers"),
    [(16, 1150, 6), (16, 0, 6), (16, 3, 4), (0, 40, 6), (5, 5, 6), (7, 1, 2), (1, 0, 3)],
)
def test_every_test_runs_once_and_each_share_starts_with_its_journeys(journeys, others, workers):
    items = [f"j{k}" for k in range(journeys)] + [f"t{k}" for k in range(others)]
    ordered = journeys_first(items, workers, lambda item: item.startswith("j"))
    assert sorted(ordered) == sorted(items)
    sizes = share_sizes(len(items), workers)
    deals = [items[k:journeys:workers] for k in range(workers)]
    if all(len(deal) <= size for deal, size in zip(deals, sizes, strict=True)):
        start = 0
        for deal, size in zip(deals, sizes, strict=True):
            assert ordered[start : start + len(deal)] == deal
            start += size
    else:  # more journeys than a share holds: they still come first, in their dealt order
        assert ordered[:journeys] == [item for deal in deals for item in deal]


def test_the_other_tests_keep_their_order():
    items = ["t1", "j1", "t2", "t3", "j2", "t4"]
    ordered = journeys_first(items, 2, lambda item: item.startswith("j"))
    assert ordered == ["j1", "t1", "t2", "j2", "t3", "t4"]
    assert [t for t in ordered if t.startswith("t")] == ["t1", "t2", "t3", "t4"]
