"""How often this user's spot instances of each type were interrupted, and how long a recovery
took, read from the run records `fab run` keeps (outputs/*/run.json, ec2.journey.history): the
observed figures `fab prices --train-config` and `choose_by: run_cost` project a run with.

Per type: interruptions (attempts that ended preempted or lost) over the spot hours its attempts
ran. Recovery: the mean of the measured notice-to-resumed times of all runs (it depends on the
setup and the data, not on the type); without one, the default of ec2.cloud.runcost.
"""

from __future__ import annotations

from pathlib import Path

from ec2.cloud.runcost import DEFAULT_INTERRUPTIONS_PER_HOUR, DEFAULT_RECOVERY_S, Interruptions
from ec2.journey import history


def _attempts(outputs: Path):
    for path in sorted(outputs.glob("*/run.json")) if outputs.is_dir() else []:
        try:
            run = history.load(path)
        except (OSError, ValueError, TypeError, KeyError):
            continue  # a record from another version, or half-written by hand: not evidence
        yield from run.attempts


def observed(outputs: Path = Path("outputs")) -> dict[str, Interruptions]:
    """Instance type → its observed interruptions; ``"*"`` holds the default with the measured
    recovery time, for types without spot hours in the records."""
    hours: dict[str, float] = {}
    count: dict[str, int] = {}
    recoveries: list[float] = []
    for a in _attempts(outputs):
        if a.seconds_notice_to_resumed is not None:
            recoveries.append(a.seconds_notice_to_resumed)
        if a.market != "spot" or not a.instance_type or not a.seconds:
            continue
        hours[a.instance_type] = hours.get(a.instance_type, 0.0) + a.seconds / 3600
        count[a.instance_type] = count.get(a.instance_type, 0) + int(a.outcome.interrupted)
    recovery = sum(recoveries) / len(recoveries) if recoveries else DEFAULT_RECOVERY_S
    how = f"recovery {recovery:.0f} s " + ("measured" if recoveries else "default")
    out = {
        t: Interruptions(count[t] / h, recovery, f"{count[t]} in {h:.1f} spot h of your runs; {how}")
        for t, h in hours.items()
        if h > 0
    }
    out["*"] = Interruptions(
        DEFAULT_INTERRUPTIONS_PER_HOUR, recovery, f"default {DEFAULT_INTERRUPTIONS_PER_HOUR:g}/h; {how}"
    )
    return out


def for_type(rates: dict[str, Interruptions], instance_type: str) -> Interruptions:
    return rates.get(instance_type) or rates["*"]
