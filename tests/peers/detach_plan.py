"""What a detached submit (`fab run --detach`) is given in tests: the bucket and checkpoint prefix,
the plan, the launch config, and an Auto Scaling client that refuses as AWS refuses an identity
without a permission (moto does not enforce IAM). Used by the submit tests and by the launch
leftover and policy tests that submit a detached run."""

from __future__ import annotations

import botocore.exceptions

from ec2.journey.stages import Plan
from tests.peers.moto_ec2 import config

BUCKET = "spot-ckpt"
CKPT = f"s3://{BUCKET}/runs/job/checkpoint"


def plan(checkpoint_dir: str | None = CKPT) -> Plan:
    """A detached run of the demo trainer checkpointing to CKPT."""
    return Plan(
        command="venv/bin/python -m ml.train --config configs/demo.yaml",
        checkpoint_dir=checkpoint_dir,
        output_dir="trained_models/job",
        max_recoveries=2,
    )


def cfg(*extra: str):
    """The launch config of a detached run: one zone, two types, a named instance profile."""
    return config(
        "region=us-east-1",
        "zones=[us-east-1a]",
        "instance_types=[g4dn.xlarge,g5.xlarge]",
        "iam_instance_profile=spotrun-job-profile",
        *extra,
    )


class DenyingAutoScaling:
    """moto's autoscaling client, except create_auto_scaling_group answers as AWS does to an
    identity without the permission (moto does not enforce IAM)."""

    def __init__(self, real, action: str):
        self._real, self._action = real, action

    def create_auto_scaling_group(self, **kw):
        raise botocore.exceptions.ClientError(
            {
                "Error": {
                    "Code": "AccessDenied",
                    "Message": f"User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
                    f"{self._action} on resource: arn:aws:autoscaling:us-east-1:123456789012:*",
                }
            },
            "CreateAutoScalingGroup",
        )

    def __getattr__(self, name):
        return getattr(self._real, name)
