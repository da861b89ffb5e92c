"""`fab bench`: measure the training step of a config on a machine (or on one fresh spot instance per
type) and keep the result for `fab prices --train-config`. Thin: parse, call ec2/, print."""

from __future__ import annotations

import shlex

from invoke import task

from common.errors import ToolkitError
from ec2 import benchstore
from ec2.journey import bench as benching
from ec2.journey.plan import machine_region
from tasks.edge import aws_config, edge, machine_name
from tasks.remote import DEFAULT_TRAIN_CONFIG, _machine_of, gpus_option


@task(iterable=["set_", "types"])
@edge
def bench(
    c,
    name=None,
    train_config=DEFAULT_TRAIN_CONFIG,
    args="",
    steps=100,
    warmup=10,
    types=None,
    list_=False,
    python=None,
    no_gpu=False,
    gpus=None,
    config=None,
    set_=None,
):
    """Time N steps of the real trainer on --name, one rank per GPU or --gpus N (or one spot instance per
    --types, on all its GPUs); --list shows results."""
    if list_:
        records = benchstore.load_all()
        print(benchstore.table(records) if records else "no bench results yet; run `fab bench --name NAME`")
        return
    overrides = shlex.split(args or "")
    steps, warmup = int(steps), int(warmup)
    if steps < 1 or warmup < 0:
        raise ToolkitError(f"--steps must be at least 1 and --warmup at least 0 (got {steps}, {warmup})")
    benching.check_shape(train_config, overrides)  # a bad config fails before anything runs
    asked = gpus_option(gpus)
    cfg = aws_config(config, set_)
    wanted = [t for arg in (types or []) for t in arg.split(",") if t]
    if wanted and asked is not None:
        raise ToolkitError(
            "--gpus measures part of one machine (--name); --types measures each type on all its GPUs, "
            "as `fab run` trains there: leave --gpus out, or bench a launched machine with --name"
        )
    if wanted:
        rows = benching.on_types(
            cfg,
            wanted,
            f"{machine_name(name, cfg)}-bench",
            train_config,
            overrides,
            steps,
            warmup,
            python=python,
            require_gpu=not no_gpu,
        )
        print(benching.table(rows))
        return
    m = _machine_of(cfg, machine_name(name, cfg))
    record = benching.on_machine(
        m, train_config, overrides, steps, warmup, machine_region(m.record, cfg), cfg.profile, gpus=asked
    )
    print(benchstore.table([record]))
    where = "not an EC2 instance" if record.instance_type == benchstore.NOT_EC2 else record.instance_type
    print(f"kept as {record.key} ({where}); `fab bench --list` shows every result")
