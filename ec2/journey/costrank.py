"""`fab prices --train-config C`: type × zone ranked by what the whole run would cost there.

Measured types (a `fab bench` result for the config's shape on that type: the one on all the
type's GPUs, as `fab run` trains there, when several are kept) rank by projected run cost
(ec2.cloud.runcost over the current spot price and this user's interruption record); types never
benchmarked for this shape follow, by spot $/h, marked. `choose_by: run_cost` orders launch
choices by the same measure (`weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ec2 import benchstore
from ec2.cloud import runcost
from ec2.cloud.quote import PriceRow
from ec2.journey import interruptions
from ml.config import TrainConfig


@dataclass(frozen=True)
class Ranked:
    row: PriceRow
    step_s: float | None  # None: never benchmarked for this shape
    source: str  # where the step time comes from
    projection: runcost.Projection | None
    rate: runcost.Interruptions

    @property
    def measured(self) -> bool:
        return self.projection is not None


def rank(price_rows: list[PriceRow], trainer: TrainConfig, steps: int, outputs: Path = Path("outputs")):
    """The rows with their projections: measured (and priced) first by run cost, then the rest by
    spot $/h (unpriced last)."""
    from ml.shape import shape_key

    type_gpus = {r.instance_type: r.info.gpu_count for r in price_rows if r.info is not None}
    measured = benchstore.step_times(shape_key(trainer), type_gpus)
    rates = interruptions.observed(outputs)
    interval = runcost.checkpoint_interval(trainer.batches_per_save, trainer.batches_per_val_step)
    out = []
    for r in price_rows:
        rec = measured.get(r.instance_type)
        rate = interruptions.for_type(rates, r.instance_type)
        if rec is None:
            out.append(Ranked(r, None, "not benchmarked", None, rate))
            continue
        note = gpus_note(rec, type_gpus.get(r.instance_type))
        source = f"bench {rec.measured_at[:10]} ({rec.device_name}{note})"
        proj = None if r.spot is None else runcost.project(steps, rec.median_step_s, r.spot, rate, interval)
        out.append(Ranked(r, rec.median_step_s, source, proj, rate))
    out.sort(
        key=lambda x: (
            not x.measured,
            x.projection.run_usd if x.projection else (x.row.spot is None, x.row.spot or 0.0),
        )
    )
    return out


def gpus_note(rec: benchstore.BenchRecord, type_gpus: int | None) -> str:
    """How many GPUs the measurement used, where that says something: ``" x4"`` for a data-parallel
    step, ``", 1 of 4 GPUs"`` when it used fewer than the type has (`fab run` would use them all)."""
    if type_gpus is not None and type_gpus > 1 and rec.gpus < type_gpus:
        return f", {rec.gpus} of {type_gpus} GPUs"
    return f" x{rec.gpus}" if rec.gpus > 1 else ""


def weights(
    instance_types: list[str], trainer: TrainConfig, outputs: Path = Path("outputs")
) -> dict[str, float]:
    """Type → billed seconds per step kept (interruptions included), for the measured types: a
    choice's price × its weight orders launches by run cost (the step count is the same for all)."""
    from ml.shape import shape_key

    # No type facts here (nothing asked of AWS): the measurement with the most GPUs per type, which
    # is the all-GPU one `rank` picks whenever one is kept.
    measured = benchstore.step_times(shape_key(trainer))
    rates = interruptions.observed(outputs)
    interval = runcost.checkpoint_interval(trainer.batches_per_save, trainer.batches_per_val_step)
    return {
        t: runcost.seconds_per_step(measured[t].median_step_s, interruptions.for_type(rates, t), interval)
        for t in instance_types
        if t in measured
    }


def table(ranked: list[Ranked], steps: int) -> str:
    head = ["TYPE", "ZONE", "SPOT $/H", "STEP", "STEP SOURCE", "HOURS", "RUN COST", "INTERRUPTIONS"]
    body = []
    for x in ranked:
        r = x.row
        spot = "-" if r.spot is None else f"${r.spot:.4f}"
        if x.projection is None:
            step = "-" if x.step_s is None else f"{x.step_s * 1000:.1f} ms"
            body.append([r.instance_type, r.zone, spot, step, f"{x.source} *", "-", "-", x.rate.source])
            continue
        p = x.projection
        body.append(
            [
                r.instance_type,
                r.zone,
                spot,
                f"{x.step_s * 1000:.1f} ms",
                x.source,
                f"{p.hours:.1f}",
                f"${p.run_usd:.2f}",
                f"{p.interruptions:.1f} expected; {x.rate.source}",
            ]
        )
    return benchstore.columns(head, body)


def apply(cfg, trainer: TrainConfig, outputs: Path = Path("outputs")):
    """``cfg`` with step_seconds filled from the bench results of ``trainer``'s shape when
    choose_by is run_cost (a value the user set wins); unchanged otherwise."""
    if cfg.choose_by != "run_cost":
        return cfg
    import dataclasses

    found = weights(cfg.instance_types, trainer, outputs)
    return dataclasses.replace(cfg, step_seconds={**found, **cfg.step_seconds})
