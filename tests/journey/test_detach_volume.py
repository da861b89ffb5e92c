"""`fab run --detach` with a workspace volume is refused, by decision (ec2/journey/detach.py,
VOLUME_REFUSAL; docs/detached.md): one line that says why, before anything is created."""

from __future__ import annotations

import boto3
import pytest

from ec2.errors import ConfigError
from ec2.journey import detach
from ec2.journey.stages import Plan
from tests.peers.moto_ec2 import config


def test_a_detached_run_with_a_volume_is_refused_saying_why_and_creates_nothing(aws_env, home):
    cfg = config("volume_name=work")
    plan = Plan(command="python -m ml.train", checkpoint_dir="s3://spot-ckpt/dj/checkpoint")
    with pytest.raises(ConfigError) as refused:
        detach.submit(cfg, "dj", plan, out=lambda line: None)
    line = str(refused.value)
    assert "\n" not in line
    assert "stays in one Availability Zone and attaches to one instance at a time" in line
    assert "leave out --detach to use the volume" in line
    assert boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert boto3.client("ec2").describe_launch_templates()["LaunchTemplates"] == []
    assert boto3.client("iam").list_roles()["Roles"] == []
