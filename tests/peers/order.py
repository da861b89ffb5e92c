"""The order `make test` runs the tests in: the journeys (tests/e2e, a minute of CPU each) first in
every xdist worker's share.

`make test`'s worksteal scheduler first gives each worker a contiguous share of the collection in
order, then moves queued tests from the busiest to the idle; a journey queued behind others could
start in the run's last minute and leave one core idle while it finishes (measured with
tests/peers/cpuacct.py's start times: the last 60 s of a 13-minute run at 1.2 cores). Dealt
round-robin to the front of each share, the journeys run first and the end of the run is short
tests (measured after: all six workers ended within 25 s of each other). Only the order changes.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def share_sizes(count: int, workers: int) -> list[int]:
    """The shares worksteal's first distribution makes of `count` tests (xdist/scheduler/worksteal.py)."""
    sizes = []
    for k in range(workers):
        sizes.append(count // (workers - k))
        count -= sizes[-1]
    return sizes


def journeys_first(items: list[T], workers: int, is_journey) -> list[T]:
    """`items` reordered so each worker's share starts with its round-robin deal of the journeys,
    filled up with the other tests in their order. A selection of mostly journeys (`pytest -n 4
    tests/e2e`) overfills the shares: whatever is left goes last. Every item appears once."""
    journeys = [item for item in items if is_journey(item)]
    rest = [item for item in items if not is_journey(item)]
    ordered: list[T] = []
    for k, size in enumerate(share_sizes(len(items), workers)):
        share = journeys[k::workers]
        fill = max(size - len(share), 0)
        ordered += share + rest[:fill]
        rest = rest[fill:]
    return ordered + rest
