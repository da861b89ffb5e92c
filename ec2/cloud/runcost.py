"""What a whole run costs on a type: steps × measured step time × price, plus what interruptions
waste. Pure arithmetic over plain numbers; `fab prices --train-config` ranks with it and
`choose_by: run_cost` orders launches with it (ec2.cloud.capacity.plan).

Per interruption the run pays, at the same price, the recovery (notice to training again, as
measured in this user's run records) and the steps recomputed since the last checkpoint: on
average half the checkpoint interval (an interruption lands anywhere between two saves; the
notice-time save of `fab run` usually keeps them, so this errs on the dear side).
Interruptions per hour come from the run records where there are any (ec2.journey.interruptions),
else DEFAULT_INTERRUPTIONS_PER_HOUR, stated as such.
"""

from __future__ import annotations

from dataclasses import dataclass

# Without run records: one interruption per 50 spot hours. AWS publishes only monthly buckets per
# type (the Spot Instance Advisor: "< 5%, 5-10%, ... >20%" of instances reclaimed in the trailing
# month, https://aws.amazon.com/ec2/spot/instance-advisor/); a stated default the user's own
# records replace as soon as there are some.
DEFAULT_INTERRUPTIONS_PER_HOUR = 0.02
# Without run records: notice to training again (a launch, SSH, setup, resume) takes ~10 minutes.
DEFAULT_RECOVERY_S = 600.0


@dataclass(frozen=True)
class Interruptions:
    per_hour: float
    recovery_s: float
    source: str  # "3 in 41.0 spot h of your runs" | "default"


def checkpoint_interval(batches_per_save: int, batches_per_val_step: int) -> int:
    """Steps between saves of last.pt (0 means: at each validation)."""
    return batches_per_save if batches_per_save > 0 else batches_per_val_step


def seconds_per_step(step_s: float, rate: Interruptions, interval_steps: int) -> float:
    """Billed seconds per step kept: the step, plus its share of the interruptions' waste
    (each costs the recovery plus half an interval of recomputed steps)."""
    waste_per_interruption = rate.recovery_s + 0.5 * interval_steps * step_s
    return step_s * (1 + rate.per_hour / 3600 * waste_per_interruption)


@dataclass(frozen=True)
class Projection:
    hours: float  # billed hours, interruptions included
    run_usd: float
    interruptions: float  # expected count


def project(
    steps: int, step_s: float, usd_per_hour: float, rate: Interruptions, interval_steps: int
) -> Projection:
    billed_s = steps * seconds_per_step(step_s, rate, interval_steps)
    compute_h = steps * step_s / 3600
    return Projection(billed_s / 3600, billed_s / 3600 * usd_per_hour, rate.per_hour * compute_h)
