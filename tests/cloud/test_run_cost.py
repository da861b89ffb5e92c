"""`fab prices --train-config` ranks type × zone by what the whole run costs: steps × the step time
`fab bench` measured × the spot price, plus the expected interruptions (this user's run records,
else a stated default). Prices are injected as the EC2 and Pricing APIs document them
(tests/peers/prices.py): moto prices every spot pair alike and has no Pricing API."""

from __future__ import annotations

import re
from pathlib import Path

from invoke import Context

from common.attempt import Attempt, Outcome
from ec2 import benchstore
from ec2.benchstore import BenchRecord
from ec2.cloud import runcost
from ec2.journey import history
from ml.config import load_train_config
from ml.shape import shape_key
from tasks import preflight
from tests.peers import prices

REPO = Path(__file__).resolve().parents[2]
DEMO = "configs/demo.yaml"
SPOT = {
    ("g4dn.xlarge", "us-east-1a"): 0.2000,  # the cheapest per hour...
    ("g5.xlarge", "us-east-1a"): 0.4000,  # ...twice as dear per hour, but three times as fast
    ("g6.xlarge", "us-east-1a"): 0.1500,  # cheaper still, never benchmarked
}
LIST = {"g4dn.xlarge": "0.5260000000", "g5.xlarge": "1.0060000000", "g6.xlarge": "0.8048000000"}


def measured(instance_type: str, step_s: float, shape: str) -> BenchRecord:
    """A result as `fab bench` keeps it."""
    return BenchRecord(
        instance_type=instance_type,
        gpus=1,
        shape_key=shape,
        train_config=DEMO,
        median_step_s=step_s,
        data_wait_share=0.01,
        peak_gpu_mem_bytes=2**30,
        device_name="NVIDIA stand-in",
        steps=100,
        machine="b",
        measured_at="2026-12-01T10:00:00Z",
    )


def test_the_dearer_type_per_hour_ranks_first_by_run_cost(home, ec2_client, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / DEMO).write_text((REPO / DEMO).read_text())
    shape = shape_key(load_train_config(DEMO, []))
    benchstore.save(measured("g4dn.xlarge", 0.90, shape))
    benchstore.save(measured("g5.xlarge", 0.30, shape))
    benchstore.save(measured("g6.xlarge", 0.10, "another-shape"))  # another config: not this run's
    prices.inject(SPOT, LIST)

    preflight.prices(
        Context(),
        train_config=DEMO,
        steps=120000,
        set_=["instance_types=[g4dn.xlarge,g5.xlarge,g6.xlarge]", "zones=[us-east-1a]"],
    )

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert (
        lines[0]
        == "us-east-1, Linux spot, 120,000 steps of configs/demo.yaml, ranked by the whole run's cost:"
    )
    rows = [re.split(r"\s{2,}", line) for line in lines[2:5]]
    assert [r[0] for r in rows] == ["g5.xlarge", "g4dn.xlarge", "g6.xlarge"]
    g5, g4dn, g6 = rows
    # 120,000 × 0.3 s = 10 h of compute at $0.40; the default 0.02 interruptions/h each waste the
    # default 600 s recovery + half of demo's 250-step checkpoint interval.
    rate = runcost.Interruptions(runcost.DEFAULT_INTERRUPTIONS_PER_HOUR, runcost.DEFAULT_RECOVERY_S, "")
    expect = runcost.project(120000, 0.30, 0.40, rate, 250)
    assert g5[2:7] == [
        "$0.4000",
        "300.0 ms",
        "bench 2026-12-01 (NVIDIA stand-in)",
        f"{expect.hours:.1f}",
        f"${expect.run_usd:.2f}",
    ]
    assert 10 < expect.hours < 10.1 and 4.0 < expect.run_usd < 4.05
    assert float(g4dn[6].lstrip("$")) > 1.4 * float(g5[6].lstrip("$"))  # 30 h at $0.20 vs 10 h at $0.40
    assert g6[3:7] == ["-", "not benchmarked *", "-", "-"]
    assert "default 0.02/h" in g5[7]
    assert "* never benchmarked for this config's shape" in out


def test_interruptions_and_recovery_come_from_the_users_run_records(
    home, ec2_client, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / DEMO).write_text((REPO / DEMO).read_text())
    shape = shape_key(load_train_config(DEMO, []))
    benchstore.save(measured("g5.xlarge", 0.30, shape))
    # A past `fab run`: 4 spot hours on g5.xlarge, preempted once, resumed 300 s after the notice.
    run = history.RunHistory(name="past", path=str(history.history_path(tmp_path / "outputs" / "past")))
    run.attempts = [
        Attempt(
            1,
            "i-1",
            "g5.xlarge",
            "us-east-1a",
            "spot",
            "2026-11-01T00:00:00+00:00",
            "2026-11-01T03:00:00+00:00",
            Outcome.PREEMPTED,
        ),
        Attempt(
            2,
            "i-2",
            "g5.xlarge",
            "us-east-1a",
            "spot",
            "2026-11-01T03:05:00+00:00",
            "2026-11-01T04:05:00+00:00",
            Outcome.FINISHED,
            seconds_notice_to_resumed=300.0,
        ),
    ]
    (tmp_path / "outputs" / "past").mkdir(parents=True)
    run.save()
    prices.inject(SPOT, LIST)

    preflight.prices(
        Context(), train_config=DEMO, steps=120000, set_=["instance_types=[g5.xlarge]", "zones=[us-east-1a]"]
    )

    row = re.split(r"\s{2,}", capsys.readouterr().out.splitlines()[2])
    expect = runcost.project(120000, 0.30, 0.40, runcost.Interruptions(0.25, 300.0, ""), 250)
    assert row[5:7] == [f"{expect.hours:.1f}", f"${expect.run_usd:.2f}"]
    assert row[7] == "2.5 expected; 1 in 4.0 spot h of your runs; recovery 300 s measured"


def test_choose_by_run_cost_makes_fab_launch_take_the_cheapest_run_not_the_cheapest_hour(
    home, ec2_client, dlami, tmp_path, monkeypatch
):
    from ec2 import registry
    from tasks import lifecycle

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / DEMO).write_text((REPO / DEMO).read_text())
    shape = shape_key(load_train_config(DEMO, []))
    benchstore.save(measured("g4dn.xlarge", 0.90, shape))
    benchstore.save(measured("g5.xlarge", 0.30, shape))
    prices.inject(SPOT, LIST)
    sets = [
        "ssh_cidr=203.0.113.7/32",
        "ami_owners=[self]",
        "instance_types=[g4dn.xlarge,g5.xlarge,g6.xlarge]",
        "zones=[us-east-1a]",
    ]

    lifecycle.launch(Context(), name="by-hour", no_wait=True, no_preflight=True, set_=sets)
    lifecycle.launch(
        Context(),
        name="by-run",
        no_wait=True,
        no_preflight=True,
        train_config=DEMO,
        set_=[*sets, "choose_by=run_cost"],
    )

    # By the hour: g6.xlarge ($0.15/h, never benchmarked). By the run: g5.xlarge, dearer per hour
    # than g4dn.xlarge but a third of its step time; g6 (no bench) comes after the measured ones.
    assert registry.get("by-hour").instance_type == "g6.xlarge"
    assert registry.get("by-run").instance_type == "g5.xlarge"


def test_fab_run_fills_step_seconds_from_the_benches_of_its_config_and_a_pinned_value_wins(home, tmp_path):
    """What `fab run` (tasks/managed.py) and `fab launch --train-config` hand to the launch order."""
    from ec2.config import load_aws_config
    from ec2.journey import costrank

    trainer = load_train_config(str(REPO / DEMO), [])
    benchstore.save(measured("g4dn.xlarge", 0.90, shape_key(trainer)))
    benchstore.save(measured("g5.xlarge", 0.30, shape_key(trainer)))
    types = "instance_types=[g4dn.xlarge,g5.xlarge,g6.xlarge]"
    by_price = load_aws_config(None, [types])
    assert costrank.apply(by_price, trainer, tmp_path).step_seconds == {}
    pinned = load_aws_config(None, [types, "choose_by=run_cost", "step_seconds={g4dn.xlarge: 0.25}"])
    filled = costrank.apply(pinned, trainer, tmp_path).step_seconds
    rate = runcost.Interruptions(runcost.DEFAULT_INTERRUPTIONS_PER_HOUR, runcost.DEFAULT_RECOVERY_S, "")
    assert filled == {"g4dn.xlarge": 0.25, "g5.xlarge": runcost.seconds_per_step(0.30, rate, 250)}


def test_a_multi_gpu_type_is_ranked_by_its_all_gpu_measurement_not_a_newer_one_gpu_one(
    home, ec2_client, tmp_path, monkeypatch, capsys
):
    """`fab run` trains on all of a type's GPUs (describe_instance_types: g5.12xlarge has 4), so a
    later `fab bench --gpus 1` on it, kept beside the 4-rank measurement, does not price its run;
    a type measured only on part of its GPUs says so."""
    import dataclasses

    from ec2.config import load_aws_config
    from ec2.journey import costrank

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / DEMO).write_text((REPO / DEMO).read_text())
    trainer = load_train_config(DEMO, [])
    shape = shape_key(trainer)
    four = dataclasses.replace(measured("g5.12xlarge", 0.40, shape), gpus=4, processes=4)
    one = dataclasses.replace(measured("g5.12xlarge", 0.25, shape), measured_at="2026-12-02T10:00:00Z")
    part = measured("g4dn.12xlarge", 0.50, shape)  # only `--gpus 1` kept for this 4-GPU type
    for record in (four, one, part):
        benchstore.save(record)
    assert {r.key for r in benchstore.load_all()} == {four.key, one.key, part.key}  # kept apart
    prices.inject(
        {("g5.12xlarge", "us-east-1a"): 2.0, ("g4dn.12xlarge", "us-east-1a"): 1.5},
        {"g5.12xlarge": "5.6720000000", "g4dn.12xlarge": "3.9120000000"},
    )

    sets = ["instance_types=[g5.12xlarge,g4dn.12xlarge]", "zones=[us-east-1a]"]
    preflight.prices(Context(), train_config=DEMO, steps=1000, set_=sets)

    rows = {r[0]: r for r in (re.split(r"\s{2,}", line) for line in capsys.readouterr().out.splitlines())}
    assert rows["g5.12xlarge"][3:5] == ["400.0 ms", "bench 2026-12-01 (NVIDIA stand-in x4)"]
    assert rows["g4dn.12xlarge"][3:5] == ["500.0 ms", "bench 2026-12-01 (NVIDIA stand-in, 1 of 4 GPUs)"]
    # The launch order (`choose_by: run_cost`) takes the same 4-GPU measurement.
    cfg = load_aws_config(None, ["instance_types=[g5.12xlarge]", "choose_by=run_cost"])
    rate = runcost.Interruptions(runcost.DEFAULT_INTERRUPTIONS_PER_HOUR, runcost.DEFAULT_RECOVERY_S, "")
    assert costrank.apply(cfg, trainer, tmp_path).step_seconds == {
        "g5.12xlarge": runcost.seconds_per_step(0.40, rate, 250)
    }
