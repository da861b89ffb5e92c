"""A failed launch leaves nothing it made: the instance role and instance profile that
`iam_instance_profile: auto` made in that call go again (a role that was there before stays), or
the error line says they were kept. moto's EC2 always has capacity, so the refusal is AWS's
documented RunInstances error injected at the botocore level (tests/peers/inject.py)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from common import aws
from ec2.cloud import iam
from ec2.cloud.launch import launch
from ec2.errors import CapacityError, ConnectionLost, ToolkitError
from tests.peers.inject import answer, ec2_error, iam_error
from tests.peers.moto_ec2 import config

ROLE = "spotrun-us-east-1-exp1"


def _no_capacity():
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html#troubleshooting-launch-capacity
    return answer(
        aws.client("ec2", "us-east-1"),
        "RunInstances",
        lambda request: ec2_error(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested "
            "(us-east-1a). Our system will be working on provisioning additional capacity.",
        ),
    )


def _spotrun_iam() -> tuple[list[str], list[str]]:
    client = boto3.client("iam", region_name="us-east-1")
    roles = [r["RoleName"] for r in client.list_roles(PathPrefix=iam.PATH)["Roles"]]
    profiles = [
        p["InstanceProfileName"]
        for p in client.list_instance_profiles(PathPrefix=iam.PATH)["InstanceProfiles"]
    ]
    return roles, profiles


def _cfg(*more: str):
    return config("instance_types=[g5.xlarge]", "zones=[us-east-1a]", *more)


def test_a_launch_refused_for_capacity_removes_the_role_and_profile_it_made(home, ec2_client, dlami, capsys):
    seen = _no_capacity()
    with pytest.raises(CapacityError, match=r"no capacity for g5.xlarge.*\[InsufficientInstanceCapacity\]"):
        launch(_cfg(), "exp1", wait_ssh=False)
    assert seen  # the refusal came after the role was made: RunInstances was asked
    out = capsys.readouterr().out
    assert f"instance role: created {ROLE}" in out
    assert f"removed instance role and profile {ROLE} (made for this launch)" in out
    assert _spotrun_iam() == ([], [])


def test_a_role_that_was_there_before_the_launch_stays(home, ec2_client, dlami):
    # An earlier launch of the name left its role (in use, or kept for the next launch).
    iam.ensure_profile(
        boto3.client("iam", region_name="us-east-1"),
        "exp1",
        "us-east-1",
        "arn:aws:iam::123456789012:user/dev",
        [],
    )
    _no_capacity()
    with pytest.raises(CapacityError):
        launch(_cfg(), "exp1", wait_ssh=False)
    assert _spotrun_iam() == ([ROLE], [ROLE])


def test_a_role_that_cannot_be_deleted_is_named_in_the_error_line(home, ec2_client, dlami):
    _no_capacity()
    answer(
        aws.client("iam", "us-east-1"),
        "DeleteRole",
        lambda request: iam_error(
            "AccessDenied",
            f"User: arn:aws:iam::123456789012:user/dev is not authorized to perform: iam:DeleteRole on "
            f"resource: arn:aws:iam::123456789012:role/spotrun/{ROLE}",
        ),
    )
    with pytest.raises(ToolkitError) as failed:
        launch(_cfg(), "exp1", wait_ssh=False)
    line = str(failed.value)
    assert "\n" not in line and line.startswith("no capacity for g5.xlarge")
    assert f"ALSO kept IAM role and instance profile {ROLE} this launch made" in line
    assert "AccessDenied" in line and "`fab cleanup` deletes them" in line
    assert _spotrun_iam()[0] == [ROLE]  # kept, as the line says


def test_a_launch_failing_after_the_instance_removes_instance_and_role(home, ec2_client, dlami, capsys):
    with pytest.raises(ConnectionLost):
        launch(_cfg("ssh_proxy_command='true'", "ssh_ready_timeout_s=0.5"), "exp1")
    out = capsys.readouterr().out
    assert (
        "terminating it so nothing is left billing" in out
        and f"removed instance role and profile {ROLE}" in out
    )
    assert _spotrun_iam() == ([], [])


def test_keep_on_failure_keeps_the_role_with_the_instance_and_says_so(home, ec2_client, dlami, capsys):
    with pytest.raises(ConnectionLost):
        launch(_cfg("ssh_proxy_command='true'", "ssh_ready_timeout_s=0.5"), "exp1", keep_on_failure=True)
    assert f"kept as asked (--keep-on-failure) (and its instance role {ROLE})" in capsys.readouterr().out
    assert _spotrun_iam() == ([ROLE], [ROLE])


def test_a_cluster_launch_refused_for_capacity_removes_the_role_it_made(
    home, ec2_client, dlami, refusing, capsys
):
    from ec2.cloud import cluster
    from tests.peers.placement_groups import install_placement_groups

    install_placement_groups()
    refusing(lambda attempt: "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError):
        cluster.launch_cluster(
            config("instance_types=[g5.12xlarge]", "zones=[us-east-1a]"), "job", 2, wait_ssh=False
        )
    assert "removed instance role and profile spotrun-us-east-1-job" in capsys.readouterr().out
    assert _spotrun_iam() == ([], [])


def test_a_detached_submit_refused_its_group_removes_the_role_it_made(home, ec2_client, dlami, monkeypatch):
    from ec2.errors import AwsError
    from ec2.journey import detach
    from tests.peers.detach_plan import BUCKET, DenyingAutoScaling, plan

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the code the bundle takes
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    real = aws.client

    def client(service, region=None, profile=None, **kw):
        c = real(service, region, profile, **kw)
        return DenyingAutoScaling(c, "autoscaling:CreateAutoScalingGroup") if service == "autoscaling" else c

    monkeypatch.setattr(aws, "client", client)
    with pytest.raises(AwsError, match="lacks autoscaling:CreateAutoScalingGroup"):
        detach.submit(_cfg("iam_instance_profile=auto"), "job", plan(), out=lambda line: None)
    assert _spotrun_iam() == ([], [])
