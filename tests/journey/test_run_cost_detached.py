"""choose_by: run_cost for a detached run: the Auto Scaling group lists its types in run-cost order
and launches spot by that priority (capacity-optimized-prioritized), read back from moto's
Auto Scaling; the spot prices are injected as DescribeSpotPriceHistory documents them."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from ec2.journey import detach
from ec2.journey.stages import Plan
from tests.peers import prices
from tests.peers.moto_ec2 import config

CKPT = "s3://spot-ckpt/runs/rc/checkpoint"


@pytest.fixture
def bucket(aws_env, home, dlami, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the code the bundle takes
    boto3.client("s3").create_bucket(Bucket="spot-ckpt")


@pytest.mark.parametrize(
    "choose_by, order, strategy",
    [
        ("run_cost", ["g5.xlarge", "g4dn.xlarge"], "capacity-optimized-prioritized"),
        ("price", ["g4dn.xlarge", "g5.xlarge"], "price-capacity-optimized"),
    ],
)
def test_detached_group_orders_types_by_run_cost(bucket, choose_by, order, strategy):
    prices.inject({("g4dn.xlarge", "us-east-1a"): 0.20, ("g5.xlarge", "us-east-1a"): 0.40}, {})
    cfg = config(
        "region=us-east-1",
        "zones=[us-east-1a]",
        "instance_types=[g4dn.xlarge,g5.xlarge]",
        "iam_instance_profile=spotrun-job-profile",
        f"choose_by={choose_by}",
        # As `fab run` fills it from the bench results (or the user pins it): g5 a third of g4dn.
        "step_seconds={g4dn.xlarge: 0.9, g5.xlarge: 0.3}",
    )
    plan = Plan(command="true", checkpoint_dir=CKPT, output_dir="trained_models/rc", max_recoveries=1)

    detach.submit(cfg, "rc", plan, poll_s=0.2)

    [group] = boto3.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=["spotrun-rc"])[
        "AutoScalingGroups"
    ]
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == order
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == strategy
