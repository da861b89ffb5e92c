"""Every IAM policy spotrun writes passes `parliament` (tests/peers/iam_lint.py): the instance role
of each mode (attended, detached, cluster, widened), read back from moto's IAM after the real
launch, and the policy file written for an admin. moto stores any document and evaluates neither
Resource nor Condition; the linter knows each action's resource types and condition keys."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from ec2.cloud import cluster, iam, s3scope
from ec2.cloud.launch import launch
from ec2.journey import detach
from tests.peers.detach_plan import cfg as detached_cfg
from tests.peers.detach_plan import plan as detached_plan
from tests.peers.iam_lint import findings
from tests.peers.moto_ec2 import config
from tests.peers.placement_groups import install_placement_groups

RUN = s3scope.for_run("s3://bci-data/hdf5", "s3://bci-ckpt/runs/exp1", "s3://bci-ckpt/backup/exp1")


def _role_policy(name: str) -> dict:
    client = boto3.client("iam", region_name="us-east-1")
    role = iam.role_name(name, "us-east-1")
    document = client.get_role_policy(RoleName=role, PolicyName=iam.POLICY_NAME)["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def test_an_attended_instance_role_and_its_widening_are_clean(home, ec2_client, dlami):
    cfg = config("instance_types=[g5.xlarge]", "s3_access=[s3://bci-data/reference, s3://whole-bucket]")
    record = launch(cfg, "exp1", wait_ssh=False, s3=RUN)
    attended = _role_policy("exp1")
    assert {st["Sid"] for st in attended["Statement"]} and findings(attended) == []
    added = iam.widen_for_instance(
        ec2_client,
        boto3.client("iam", region_name="us-east-1"),
        record.instance_id,
        s3scope.for_run("s3://other-data/set2", "s3://bci-ckpt/runs/exp2", None),
        "arn:aws:iam::123456789012:user/dev",
    )
    widened = _role_policy("exp1")
    assert added and widened != attended and findings(widened) == []


@pytest.mark.parametrize("budget", [[], ["max_cost_usd=5", "on_demand_after=2"]], ids=["plain", "budget"])
def test_a_detached_instance_role_is_clean(monkeypatch, aws_env, home, dlami, budget):
    """With a budget the boot may switch its own group to on-demand (UpdateAutoScalingGroup on that
    group only) and read spot prices (DescribeSpotPriceHistory, read-only); without one, neither."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the code the bundle takes
    boto3.client("s3").create_bucket(Bucket="spot-ckpt")
    done = detach.submit(
        detached_cfg("iam_instance_profile=auto", *budget), "job", detached_plan(), poll_s=0.2
    )
    document = _role_policy("job")
    [own] = [st for st in document["Statement"] if "autoscaling:SetDesiredCapacity" in st["Action"]]
    group_arn = (
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/spotrun-job"
    )
    assert own["Resource"] == [group_arn]
    updates = [st for st in document["Statement"] if "autoscaling:UpdateAutoScalingGroup" in st["Action"]]
    prices = [st for st in document["Statement"] if "ec2:DescribeSpotPriceHistory" in st["Action"]]
    if budget:
        assert updates == [own] and [(st["Action"], st["Resource"]) for st in prices] == [
            (["ec2:DescribeSpotPriceHistory"], "*")
        ]
        # The keys travel in the run's record, with what the boot cannot look up itself.
        assert (done.state.max_cost_usd, done.state.on_demand_after) == (5.0, 2)
        assert set(done.state.on_demand_usd) == {"g4dn.xlarge", "g5.xlarge"}
    else:
        assert updates == [] and prices == []
    assert findings(document) == []


def test_a_cluster_instance_role_is_clean(home, ec2_client, dlami):
    install_placement_groups()
    cfg = config("instance_types=[g5.12xlarge]", "zones=[us-east-1b]")
    cluster.launch_cluster(cfg, "job", 2, wait_ssh=False, s3=RUN)
    document = _role_policy("job")
    assert findings(document) == []


def test_the_admin_policy_has_only_the_expected_permissions_management_note(home):
    caller = "arn:aws:iam::123456789012:user/dev"
    iam.ask_an_admin(caller)
    document = json.loads(Path(iam.caller_policy_file()).read_text())
    # It lets the caller create roles and pass them to EC2: permissions management, by design
    # (scoped to /spotrun/), and nothing else.
    assert [issue for issue, _ in findings(document)] == ["PERMISSIONS_MANAGEMENT_ACTIONS"]


@pytest.mark.parametrize(
    "bad",
    [
        {"Effect": "Allow", "Action": "s3:GetObjekt", "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b/prefix/*"},
    ],
)
def test_the_linter_sees_what_moto_accepts(bad):
    assert findings({"Version": "2012-10-17", "Statement": [bad]}) != []


def test_the_fis_experiment_role_is_clean(aws_env):
    """`fab rehearse`'s role, as made in moto's IAM and read back: its policy and its trust."""
    from ec2.cloud import fis

    client = boto3.client("iam", region_name="us-east-1")
    role = fis.ensure_role(client, "us-east-1", "arn:aws:iam::123456789012:user/dev", out=lambda _line: None)
    got = client.get_role_policy(RoleName=role.name, PolicyName=fis.POLICY_NAME)["PolicyDocument"]
    document = json.loads(got) if isinstance(got, str) else got
    assert document["Statement"] and findings(document) == []
    trust = client.get_role(RoleName=role.name)["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "fis.amazonaws.com"}]
