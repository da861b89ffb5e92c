"""Drivers of the three run engines for the one spot journey (tests/e2e/test_spot_journey.py):
attended (`fab run`, one instance, the laptop watching), cluster (`fab run --nodes 2`) and
detached (`fab run --detach`, the Auto Scaling group, no laptop). Each knows how to start its
engine and how to play AWS for it (the notice sent by `fab rehearse` through the FIS stand-in and
the IMDS stand-in, the instance taken back through moto), and holds the assertions only its engine
has, the rehearsal's report among them. Its waits are bounds for a loaded 2-core machine
(generous: they only decide how long a broken run takes to fail), never what is asserted.

A driver has: start(), training() (waits for the trainer's third batch), notice() (AWS's notice;
waits until the checkpoint is secured, returns the step the trainer stopped at), take_back() (AWS
takes the noticed instance back; the engine's replacement starts), finish() -> Finished, live()
(the run's pending or running instances), and check_engine(finished, stopped). training() leaves
the trainer's ranks held still (tests/peers/hold.py) and notice() lets them go once the notice
has reached them; `held`, the hold, is let go at the fixture's end whatever happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.attempt import Attempt

ENGINES = ["attended", "cluster", "detached"]


@dataclass
class Finished:
    name: str  # the run's name
    out: str  # what the user saw, summary included
    attempts: list[Attempt]  # the run's record (run.json, or the detached run's S3 record)
    resumed_log: str  # the trainer's log of the attempt that resumed
    noticed: str  # the instance that got the notice


def instances_of(attempt: Attempt) -> list[str]:
    """The instances an attempt ran on: every node's for a cluster, else its one."""
    return list(attempt.instance_ids) or [attempt.instance_id]
