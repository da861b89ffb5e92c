"""The steps a trainer's log shows: the last one it reached, and the step it resumed from ("resumed
from URI at step N"). The laptop reads them from its polls of the log (ec2.journey.decide); a
detached run's boot reads them from the log on the instance (ec2.remote.attempt_notes). Standard
library only: the boot imports it with the instance's bare Python."""

from __future__ import annotations

import re

_RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")
_STEP = re.compile(r"\b(?:step|batch)\s*[:=#]?\s*(\d+)", re.IGNORECASE)


def last_step(log: str) -> int | None:
    steps = [int(m.group(1)) for m in _STEP.finditer(log)]
    return steps[-1] if steps else None


def resumed_step(log: str) -> int | None:
    found = _RESUMED.findall(log)
    return int(found[-1][1]) if found else None
