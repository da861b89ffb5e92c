"""Before money is spent: `fab doctor` (is everything a launch needs in place?) and `fab prices`
(what would each configured type cost, where?). Thin: parse, call ec2/, print, exit codes."""

from __future__ import annotations

import shlex
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from common.errors import ToolkitError
from ec2 import doctor as checks
from ec2.cloud import account, quote
from tasks.edge import aws_config, edge, machine_name

DEFAULT_TRAIN_CONFIG = "configs/rnn_args.yaml"


def run_prefixes(train_config: str | None, args: str, data_uri: str | None) -> tuple[str | None, str | None]:
    """The run's dataset_dir and checkpoint_dir, as `fab run` / `fab train` would resolve them."""
    overrides = shlex.split(args or "")
    if data_uri:
        overrides.append(f"dataset.dataset_dir={data_uri}")
    if not train_config or not Path(train_config).is_file():
        if overrides:
            raise ToolkitError(f"train config {train_config} not found; pass --train-config PATH")
        return None, None
    from ml.config import load_train_config

    trainer = load_train_config(train_config, overrides)
    return trainer.dataset.dataset_dir, trainer.checkpoint_dir


@task(iterable=["set_"])
@edge
def doctor(
    c, name=None, train_config=None, args="", data_uri=None, request_quota=None, config=None, set_=None
):
    """Check credentials, AMI, quotas, the S3 role and prefixes, key, SSH rule and local tools; ✗ exits 1."""
    cfg = aws_config(config, set_)
    if request_quota is not None:
        checks.request_quota(cfg, int(request_quota))
        return
    dataset_dir, checkpoint_dir = run_prefixes(train_config, args, data_uri)
    needs = checks.needs_for(cfg, dataset_dir, checkpoint_dir)
    rows = checks.run(checks.Context(cfg, machine_name(name, cfg), needs))
    print(checks.table(rows))
    failed = [r.name for r in rows if r.status == checks.FAIL]
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        raise Exit(code=1)
    unknown = sum(r.status == checks.UNKNOWN for r in rows)
    print(f"all checks passed{f' ({unknown} unknown)' if unknown else ''}")


@task(iterable=["set_", "types"])
@edge
def prices(
    c, hours=1.0, types=None, region=None, train_config=None, args="", steps=None, config=None, set_=None
):
    """Spot/on-demand $/h and --hours' cost per type × zone; --train-config C: ranked by the run's cost.

    With --train-config (and --steps N, default its num_training_batches): N × the step time `fab
    bench` measured × the spot price, plus the expected interruptions' recovery and recomputed steps."""
    cfg = aws_config(config, set_)
    if region:
        cfg.region = region
    instance_types = [t for arg in (types or []) for t in arg.split(",") if t] or list(cfg.instance_types)
    where = account.resolve_region(cfg)
    ec2 = account.client(cfg, "ec2", where)
    trainer = None
    if train_config:
        from ml.config import load_train_config

        if not Path(train_config).is_file():
            raise ToolkitError(f"train config {train_config} not found; pass --train-config PATH")
        trainer = load_train_config(train_config, shlex.split(args or ""))
    price_rows, notes = quote.rows(ec2, instance_types, list(cfg.zones), where, cfg.profile)
    if trainer is not None:
        from ec2.journey import costrank

        n = int(steps) if steps is not None else trainer.num_training_batches
        ranked = costrank.rank(price_rows, trainer, n)
        print(f"{where}, Linux spot, {n:,} steps of {train_config}, ranked by the whole run's cost:")
        print(costrank.table(ranked, n))
        if any(not x.measured for x in ranked):
            print(
                "* never benchmarked for this config's shape: ranked by spot $/h below the measured ones; "
                f"measure with `fab bench --types TYPE,... --train-config {train_config}`"
            )
        for note in notes:
            print(f"note: {note}")
        return
    print(f"{where}, Linux, {float(hours):g} h:")
    print(quote.table(price_rows, float(hours)))
    for note in notes:
        print(f"note: {note}")
