"""`fab bench` measures the user's own training step on a machine over SSH and keeps the result:
on an adopted host (the sshd stand-in) whose instance metadata (the IMDS stand-in) names its type,
the result is stored under that type, GPU count and the config's shape, priced at the type's spot
price, and `fab bench --list` shows it. On a host whose `nvidia-smi -L` lists two GPUs (a
stand-in: the ranks run on the CPU with gloo) the step is a 2-rank torchrun step, as `fab run`
would train there, and the result is kept under 2 GPUs."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

from common import aws
from ec2 import benchstore
from ml.config import load_train_config
from ml.shape import shape_key
from tasks import remote
from tasks.bench import bench
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]


def bench_args(data) -> list[str]:
    """configs/demo.yaml shrunk to a 16-unit, 1-layer GRU: a step takes milliseconds on a CPU."""
    return [*TINY_TRAIN, f"dataset.dataset_dir={data}", "model.n_units=16", "model.n_layers=1"]


def test_bench_on_an_adopted_host_prints_and_keeps_the_step_time(
    spot_host, imds, tiny_dataset, monkeypatch, capfd
):
    monkeypatch.chdir(REPO)  # the code `fab setup` sends
    aws.reset_clients()
    imds.instance_type, imds.zone = "g6.xlarge", "us-east-1b"
    # The adopted machine's region (what `fab train` would export); moto answers the spot price.
    sets = ["region=us-east-1"]
    spot_host.record("lab")
    c = Context()
    remote.setup(c, name="lab", python=str(REPO / ".venv/bin/python"), no_gpu=True, set_=sets)
    spot_host.stand_in_gpus(2)
    capfd.readouterr()
    args = " ".join(bench_args(tiny_dataset))

    # More ranks than GPUs is refused as `fab train --gpus` refuses it, before anything runs.
    with pytest.raises(Exit):
        bench(c, name="lab", train_config="configs/demo.yaml", args=args, gpus=3, set_=sets)
    assert "error: --gpus 3 asked for, but the machine has 2 GPU(s)" in capfd.readouterr().err

    bench(c, name="lab", train_config="configs/demo.yaml", args=args, steps=3, warmup=1, set_=sets)

    out = capfd.readouterr().out
    key = shape_key(load_train_config("configs/demo.yaml", bench_args(tiny_dataset)))
    (record,) = benchstore.load_all()
    assert (record.instance_type, record.gpus, record.processes, record.shape_key) == ("g6.xlarge", 2, 2, key)
    assert record.zone == "us-east-1b" and record.market == "spot" and record.steps == 3
    assert 0 < record.median_step_s < 60 and record.peak_gpu_mem_bytes is None
    # Priced at the type's spot price in its zone, as EC2 reports it now.
    ec2 = boto3.client("ec2", region_name="us-east-1")
    history = ec2.describe_spot_price_history(
        InstanceTypes=["g6.xlarge"], AvailabilityZone="us-east-1b", ProductDescriptions=["Linux/UNIX"]
    )["SpotPriceHistory"]
    assert record.usd_per_hour == float(history[0]["SpotPrice"]) and record.usd > 0
    assert f"{record.median_step_s * 1000:.1f}" in out and "no GPU" in out
    assert "x2 ranks" in out and f"kept as g6.xlarge-2gpu-{key} (g6.xlarge)" in out

    bench(c, list_=True)
    listing = capfd.readouterr().out
    assert "g6.xlarge" in listing and key in listing and "configs/demo.yaml" in listing


def instance_states(ec2) -> dict[str, str]:
    """Every spotrun instance moto holds (not the one the test image was made from): name → state."""
    out = {}
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            if "spotrun:name" in tags:
                out[tags["spotrun:name"]] = i["State"]["Name"]
    return out


def refuse_capacity_for(instance_type: str) -> list:
    """EC2's documented InsufficientInstanceCapacity error for RunInstances of ``instance_type``,
    injected at the botocore level in front of moto (which has no capacity limits)."""
    from tests.peers.inject import answer, ec2_error

    def refuse(request):
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        if f"InstanceType={instance_type}" in body:
            return ec2_error("InsufficientInstanceCapacity", "We currently do not have sufficient capacity.")
        return None

    return answer(aws.client("ec2", "us-east-1", None), "RunInstances", refuse)


def spot_vcpu_quota(vcpus: float) -> list:
    """Service Quotas' documented GetServiceQuota response (moto has none for EC2's codes),
    injected at the botocore level: every quota asked for holds ``vcpus``."""
    import json

    from tests.peers.inject import answer, json_answer

    def get(request):
        code = json.loads(request.body)["QuotaCode"]
        quota = {"ServiceCode": "ec2", "QuotaCode": code, "QuotaName": "injected", "Value": vcpus}
        return json_answer({"Quota": {**quota, "Unit": "None", "Adjustable": True, "GlobalQuota": False}})

    return answer(aws.client("service-quotas", "us-east-1", None, attempts=2), "GetServiceQuota", get)


def test_bench_types_launches_measures_and_terminates_each_also_when_one_has_no_capacity(
    cloud, spot_host, tiny_dataset, capfd
):
    ec2, config = cloud
    refused = refuse_capacity_for("g4dn.xlarge")
    # 8 spot vCPUs of "All G and VT Spot Instance Requests": both 4-vCPU types launch side by side.
    asked = spot_vcpu_quota(8.0)
    c = Context()
    args = " ".join(bench_args(tiny_dataset))

    bench(
        c,
        name="cmp",
        train_config="configs/demo.yaml",
        args=args,
        steps=2,
        warmup=1,
        types=["g4dn.xlarge,g5.xlarge"],
        python=str(REPO / ".venv/bin/python"),
        no_gpu=True,
        config=str(config),
    )

    out = capfd.readouterr().out
    assert refused and asked, "the capacity refusal or the quota was never asked for"
    table = out[out.index("TYPE  ") :]
    assert "g4dn.xlarge" in table and "no spot capacity (InsufficientInstanceCapacity)" in table
    (record,) = benchstore.load_all()
    assert record.instance_type == "g5.xlarge" and record.zone == "us-east-1a" and record.market == "spot"
    assert f"{record.median_step_s * 1000:.1f}" in table
    # Every instance the bench launched is gone, and so are its local entries.
    assert instance_states(ec2) == {"cmp-bench-g5-xlarge": "terminated"}
    from ec2 import registry

    assert registry.load_all() == {}


def test_an_interrupt_between_launch_and_record_still_terminates_the_instance(cloud, tiny_dataset):
    """Ctrl-C right after RunInstances answered, before launch handed back its record: the
    instance is found again by its tag and terminated."""

    from ec2.config import load_aws_config
    from ec2.journey import bench as benching

    ec2, config = cloud

    def out(line: str) -> None:
        if "launched i-" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        benching.on_types(
            load_aws_config(str(config), []),
            ["g5.xlarge"],
            "ctl",
            "configs/demo.yaml",
            bench_args(tiny_dataset),
            2,
            1,
            out=out,
        )
    assert instance_states(ec2) == {"ctl-g5-xlarge": "terminated"}


def test_a_type_whose_setup_fails_is_one_row_and_its_instance_is_terminated(cloud, tiny_dataset):
    from ec2.config import load_aws_config
    from ec2.journey import bench as benching

    ec2, config = cloud
    rows = benching.on_types(
        load_aws_config(str(config), []),
        ["g5.xlarge"],
        "bad",
        "configs/demo.yaml",
        bench_args(tiny_dataset),
        2,
        1,
        python="/no/such/python",
        require_gpu=False,
        out=lambda line: None,
    )
    [row] = rows
    assert row.record is None and row.problem.startswith("failed: setup failed (exit")
    assert instance_states(ec2) == {"bad-g5-xlarge": "terminated"}
    assert benchstore.load_all() == []
