"""The instance role spotrun makes (`iam_instance_profile: auto`) on moto's IAM and EC2: what a
default launch attaches, the policy documents themselves, widening for a new run, IAM's eventual
consistency (played by the gate in front of moto, tests/peers/iam_lag.py), a caller without IAM
rights (injected at the botocore level, since moto's IAM does not refuse), and cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from common import aws
from ec2.cloud import iam, propagation, s3scope
from ec2.cloud.launch import launch
from ec2.cloud.s3scope import READ, WRITE, Grant
from ec2.errors import AwsError, ConfigError
from tests.peers.inject import answer, ec2_error, iam_error
from tests.peers.moto_ec2 import config

GROUP = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/spotrun-exp1"
RUN = s3scope.for_run("s3://bci-data/hdf5_data_final", "s3://bci-ckpt/runs/exp1", "s3://bci-ckpt/backup/exp1")


def _instance(ec2, instance_id):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _role_of(iam_client, profile_arn):
    profile = iam_client.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])
    (role,) = profile["InstanceProfile"]["Roles"]
    return profile["InstanceProfile"], iam_client.get_role(RoleName=role["RoleName"])["Role"]


def _policy(iam_client, role_name):
    assert iam_client.list_role_policies(RoleName=role_name)["PolicyNames"] == [iam.POLICY_NAME]
    assert iam_client.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"] == []
    return iam_client.get_role_policy(RoleName=role_name, PolicyName=iam.POLICY_NAME)["PolicyDocument"]


def _s3_resources(document):
    objects, buckets = {}, {}
    for st in document["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for action in actions:
            assert action.startswith("s3:") and "*" not in action, action
        for resource in resources:
            assert resource.startswith("arn:aws:s3:::"), resource
            if actions == ["s3:ListBucket"]:
                buckets[resource] = st.get("Condition")
            else:
                objects[resource] = sorted(actions)
    return objects, buckets


def test_default_launch_attaches_a_role_reaching_only_the_runs_prefixes(home, ec2_client, dlami, capsys):
    cfg = config("instance_types=[g5.xlarge]", "s3_access=[s3://bci-data/reference/lm]")
    assert cfg.iam_instance_profile == "auto"  # the default
    record = launch(cfg, "exp1", wait_ssh=False, s3=RUN)
    assert "instance role: created spotrun-us-east-1-exp1" in capsys.readouterr().out

    iam_client = boto3.client("iam", region_name="us-east-1")
    raw = _instance(ec2_client, record.instance_id)
    profile, role = _role_of(iam_client, raw["IamInstanceProfile"]["Arn"])
    assert profile["Path"] == role["Path"] == "/spotrun/"
    assert role["RoleName"] == profile["InstanceProfileName"] == "spotrun-us-east-1-exp1"
    trust = role["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    tags = {t["Key"]: t["Value"] for t in role["Tags"]}
    assert tags["spotrun:managed"] == "true" and tags["spotrun:name"] == "exp1"
    assert tags["spotrun:region"] == "us-east-1" and tags["spotrun:owner"].startswith("arn:aws:")

    objects, buckets = _s3_resources(_policy(iam_client, role["RoleName"]))
    read, write = ["s3:GetObject"], sorted(s3scope.WRITE_ACTIONS)
    # Exactly the run's prefixes and s3_access: the data read-only, checkpoints and backup read/write.
    assert objects == {
        "arn:aws:s3:::bci-data/hdf5_data_final/*": read,
        "arn:aws:s3:::bci-data/reference/lm/*": read,
        "arn:aws:s3:::bci-ckpt/backup/exp1/*": write,
        "arn:aws:s3:::bci-ckpt/runs/exp1/*": write,
    }
    # Listing only under those prefixes (the prefix itself, and below it), in those buckets only.
    assert buckets == {
        "arn:aws:s3:::bci-data": {
            "StringLike": {
                "s3:prefix": ["hdf5_data_final", "hdf5_data_final/*", "reference/lm", "reference/lm/*"]
            }
        },
        "arn:aws:s3:::bci-ckpt": {
            "StringLike": {"s3:prefix": ["backup/exp1", "backup/exp1/*", "runs/exp1", "runs/exp1/*"]}
        },
    }


def test_relaunch_reuses_the_role_with_exactly_the_new_runs_prefixes(home, ec2_client, dlami):
    cfg = config("instance_types=[g5.xlarge]")
    first = launch(cfg, "exp1", wait_ssh=False, s3=RUN)
    first_arn = _instance(ec2_client, first.instance_id)["IamInstanceProfile"]["Arn"]
    ec2_client.terminate_instances(InstanceIds=[first.instance_id])
    later = s3scope.for_run("s3://bci-data/other", None, None)
    second = launch(cfg, "exp1", wait_ssh=False, s3=later)

    iam_client = boto3.client("iam", region_name="us-east-1")
    roles = iam_client.list_roles(PathPrefix="/spotrun/")["Roles"]
    assert [r["RoleName"] for r in roles] == ["spotrun-us-east-1-exp1"]
    arn = _instance(ec2_client, second.instance_id)["IamInstanceProfile"]["Arn"]
    assert arn == first_arn
    objects, buckets = _s3_resources(_policy(iam_client, "spotrun-us-east-1-exp1"))
    assert objects == {"arn:aws:s3:::bci-data/other/*": ["s3:GetObject"]}
    assert list(buckets) == ["arn:aws:s3:::bci-data"]


def test_fab_train_widens_the_role_for_a_run_it_does_not_cover(home, ec2_client, dlami, capsys):
    cfg = config("instance_types=[g5.xlarge]")
    record = launch(cfg, "exp1", wait_ssh=False, s3=s3scope.for_run("s3://bci-data/hdf5", None, None))
    iam_client = aws.client("iam", "us-east-1")
    owner = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Arn"]
    # Another caller (h-detach's autoscaling statement) added a statement: widening keeps it.
    extra = {
        "Sid": "Group",
        "Effect": "Allow",
        "Action": "autoscaling:SetDesiredCapacity",
        "Resource": GROUP,
    }
    have = s3scope.grants_in(_policy(iam_client, "spotrun-us-east-1-exp1"))
    iam.put_policy(iam_client, "spotrun-us-east-1-exp1", have, owner, extra=[extra])
    capsys.readouterr()

    # A sub-prefix of what it reads is covered: nothing changes, nothing is said.
    covered = s3scope.for_run("s3://bci-data/hdf5/t15", None, None)
    assert iam.widen_for_instance(ec2_client, iam_client, record.instance_id, covered, owner) == []
    assert capsys.readouterr().out == ""

    added = iam.widen_for_instance(
        ec2_client,
        iam_client,
        record.instance_id,
        s3scope.for_run("s3://bci-data/hdf5", "s3://bci-ckpt/runs/exp2", None),
        owner,
    )
    assert added == [Grant("bci-ckpt", "runs/exp2", WRITE)]
    assert "widened to reach s3://bci-ckpt/runs/exp2 (read/write)" in capsys.readouterr().out
    document = _policy(iam_client, "spotrun-us-east-1-exp1")
    assert extra in document["Statement"]
    objects, _ = _s3_resources({"Statement": [s for s in document["Statement"] if s != extra]})
    assert set(objects) == {"arn:aws:s3:::bci-data/hdf5/*", "arn:aws:s3:::bci-ckpt/runs/exp2/*"}


def test_a_fresh_profile_ec2_cannot_see_yet_is_waited_for(home, ec2_client, dlami, aws_gate, monkeypatch):
    """IAM is eventually consistent: RunInstances refuses a profile made seconds ago
    (InvalidParameterValue "... Invalid IAM Instance Profile name"; the gate answers so, as AWS
    does). The launch waits, saying for what, and goes on."""
    monkeypatch.setattr(aws_gate.lag, "lag_s", 1000.0)  # until the profile "propagates" below
    monkeypatch.setattr(propagation, "DELAYS_S", (0, 0, 0))
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if "does not see instance profile" in line:
            aws_gate.lag.settle()

    record = launch(
        config("instance_types=[g5.xlarge]", "zones=[us-east-1a]"), "exp1", wait_ssh=False, out=out
    )
    assert record.instance_id and aws_gate.refused.count(("iam-lag", "RunInstances")) == 1
    assert (
        "      EC2 does not see instance profile spotrun-us-east-1-exp1 yet (IAM propagates); retry in 0 s"
    ) in lines


def test_a_fresh_profile_that_never_propagates_fails_bounded(home, ec2_client, dlami, aws_gate, monkeypatch):
    monkeypatch.setattr(aws_gate.lag, "lag_s", 1000.0)
    monkeypatch.setattr(propagation, "DELAYS_S", (0, 0))
    with pytest.raises(AwsError, match="Invalid IAM Instance Profile") as e:
        launch(config("instance_types=[g5.xlarge]", "zones=[us-east-1a]"), "exp1", wait_ssh=False)
    assert (
        "still refused after waiting 0 s for IAM to propagate instance profile spotrun-us-east-1-exp1"
        in str(e.value)
    )
    assert "\n" not in str(e.value)
    assert aws_gate.refused.count(("iam-lag", "RunInstances")) == 3  # the first try and two more


def test_a_caller_without_iam_rights_gets_one_line_and_a_policy_file(home, ec2_client, dlami):
    iam_client = aws.client("iam", "us-east-1")
    answer(
        iam_client,
        "CreateRole",
        lambda request: iam_error(
            "AccessDenied",
            "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: iam:CreateRole on "
            "resource: arn:aws:iam::123456789012:role/spotrun/spotrun-us-east-1-exp1",
        ),
    )
    with pytest.raises(iam.IamPermissionError) as refused:
        launch(config("instance_types=[g5.xlarge]"), "exp1", wait_ssh=False)
    message = str(refused.value)
    assert "\n" not in message and "may not iam:CreateRole" in message and "[AccessDenied]" in message
    assert "iam_instance_profile: NAME" in message
    path = Path(iam.caller_policy_file())
    assert str(path) in message and oct(path.stat().st_mode & 0o777) != "0o777"
    wanted = json.loads(path.read_text())
    actions = {a for st in wanted["Statement"] for a in st["Action"]} if wanted else set()
    assert {"iam:CreateRole", "iam:PutRolePolicy", "iam:CreateInstanceProfile", "iam:PassRole"} <= actions
    passing = next(st for st in wanted["Statement"] if "iam:PassRole" in st["Action"])
    assert passing["Resource"] == "arn:aws:iam::123456789012:role/spotrun/*"
    # Nothing was launched before the refusal.
    assert (
        ec2_client.describe_instances(Filters=[{"Name": "tag-key", "Values": ["spotrun:name"]}])[
            "Reservations"
        ]
        == []
    )


def test_the_admin_policy_covers_a_fresh_accounts_first_launch(aws_env):
    """The policy file for an admin also grants what a fresh account's first launch needs and is
    easily missed: the two service-linked roles (those only), tags, placement scores, prices."""
    document = iam.caller_policy("arn:aws:iam::123456789012:user/dev")
    actions = {
        a
        for st in document["Statement"]
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    assert {
        "iam:CreateServiceLinkedRole",
        "ec2:CreateTags",
        "ec2:GetSpotPlacementScores",
        "pricing:GetProducts",
    } <= actions
    [linked] = [st for st in document["Statement"] if st["Action"] == "iam:CreateServiceLinkedRole"]
    assert linked["Resource"] == [
        "arn:aws:iam::123456789012:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
        "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
    ]
    assert linked["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": ["spot.amazonaws.com", "autoscaling.amazonaws.com"]}
    }
    # A valid policy document as IAM parses it (moto's IAM validates the grammar).
    boto3.client("iam").create_policy(PolicyName="spotrun-caller", PolicyDocument=json.dumps(document))


def test_run_instances_refusing_pass_role_names_it(home, ec2_client, dlami):
    answer(
        aws.client("ec2", "us-east-1"),
        "RunInstances",
        lambda request: ec2_error(
            "UnauthorizedOperation",
            "You are not authorized to perform this operation. User: arn:aws:iam::123456789012:user/dev "
            "is not authorized to perform: iam:PassRole on resource: "
            "arn:aws:iam::123456789012:role/spotrun/spotrun-us-east-1-exp1",
        ),
    )
    with pytest.raises(iam.IamPermissionError, match=r"may not iam:PassRole.*\[UnauthorizedOperation\]"):
        launch(config("instance_types=[g5.xlarge]", "zones=[us-east-1a]"), "exp1", wait_ssh=False)


def test_a_named_profile_or_none_is_used_as_it_is(home, ec2_client, dlami, aws_gate):
    iam_client = boto3.client("iam", region_name="us-east-1")
    arn = iam_client.create_instance_profile(InstanceProfileName="team-s3")["InstanceProfile"]["Arn"]
    aws_gate.lag.settle()  # the team's profile was made long before this launch
    named = launch(config("instance_types=[g5.xlarge]", "iam_instance_profile=team-s3"), "a", wait_ssh=False)
    bare = launch(config("instance_types=[g5.xlarge]", "iam_instance_profile=null"), "b", wait_ssh=False)
    assert _instance(ec2_client, named.instance_id)["IamInstanceProfile"]["Arn"] == arn
    assert "IamInstanceProfile" not in _instance(ec2_client, bare.instance_id)
    assert iam_client.list_roles(PathPrefix="/spotrun/")["Roles"] == []


def test_cleanup_deletes_only_unused_spotrun_roles(home, ec2_client, dlami, capsys):
    from ec2.cloud import cleanup

    iam_client = boto3.client("iam", region_name="us-east-1")
    iam_client.create_role(RoleName="someone-elses", AssumeRolePolicyDocument=json.dumps(iam.TRUST_POLICY))
    cfg = config("instance_types=[g5.xlarge]")
    kept = launch(cfg, "busy", wait_ssh=False, s3=RUN)
    gone = launch(cfg, "done", wait_ssh=False, s3=RUN)
    ec2_client.terminate_instances(InstanceIds=[gone.instance_id])
    capsys.readouterr()
    cleanup.roles(cfg, "us-east-1", ec2_client, print)
    out = capsys.readouterr().out
    assert "kept IAM role spotrun-us-east-1-busy" in out
    assert "deleted IAM role and instance profile spotrun-us-east-1-done" in out
    names = {r["RoleName"] for r in iam_client.list_roles()["Roles"]}
    assert names == {"someone-elses", "spotrun-us-east-1-busy"}
    profiles = {p["InstanceProfileName"] for p in iam_client.list_instance_profiles()["InstanceProfiles"]}
    assert profiles == {"spotrun-us-east-1-busy"}
    assert kept.instance_id


def test_scopes_parse_merge_and_refuse_wildcards():
    grants = s3scope.from_config(["s3://bci-data/hdf5/", "rw:s3://bci-ckpt/runs", "s3://bci-data"])
    assert grants == [
        Grant("bci-data", "hdf5", READ),
        Grant("bci-ckpt", "runs", WRITE),
        Grant("bci-data", "", READ),
    ]
    # The whole bucket covers its prefixes; write covers read, not the other way round.
    assert s3scope.minimal(grants) == [Grant("bci-ckpt", "runs", WRITE), Grant("bci-data", "", READ)]
    assert s3scope.missing([Grant("bci-ckpt", "runs", READ)], [Grant("bci-ckpt", "runs/x", WRITE)])
    assert not s3scope.missing([Grant("bci-ckpt", "runs", WRITE)], [Grant("bci-ckpt", "runs/x", READ)])
    assert s3scope.missing([Grant("bci-ckpt", "run", WRITE)], [Grant("bci-ckpt", "runs", READ)])
    document = s3scope.policy_document(grants)
    assert s3scope.grants_in(document) == s3scope.minimal(grants)
    whole = [st for st in document["Statement"] if st["Resource"] == "arn:aws:s3:::bci-data"]
    assert "Condition" not in whole[0]  # a bucket named alone is the whole bucket, as asked
    for bad in ("s3://bci-data/*", "s3://X/data", "bci-data/hdf5", "rw:bci"):
        with pytest.raises(ConfigError, match="s3_access"):
            s3scope.from_config([bad])
    with pytest.raises(ConfigError, match="s3_access"):
        config("s3_access=[s3://bci-data/a*]")


def test_long_names_fit_iam_limits():
    name = iam.role_name("x" * 63, "ap-southeast-2")
    assert len(name) == 64 and name.startswith("spotrun-ap-southeast-2-xxx")
    assert name != iam.role_name("x" * 62 + "y", "ap-southeast-2")
    assert iam.partition_of("arn:aws-cn:sts::1:assumed-role/a/b") == "aws-cn"


def test_a_configured_profile_ec2_refuses_fails_at_once(home, ec2_client, dlami, monkeypatch):
    monkeypatch.setattr(propagation, "DELAYS_S", (0, 0, 0))
    boto3.client("iam", region_name="us-east-1").create_instance_profile(InstanceProfileName="team-s3")
    seen = answer(
        aws.client("ec2", "us-east-1"),
        "RunInstances",
        lambda request: ec2_error(
            "InvalidParameterValue",
            "Value (team-s3) for parameter iamInstanceProfile.name is invalid. "
            "Invalid IAM Instance Profile name",
        ),
    )
    cfg = config("instance_types=[g5.xlarge]", "zones=[us-east-1a]", "iam_instance_profile=team-s3")
    with pytest.raises(AwsError, match="InvalidParameterValue"):
        launch(cfg, "exp1", wait_ssh=False)
    assert len(seen) == 1  # not the user's typo retried for a minute


def test_a_detached_runs_role_reads_back_and_widens_keeping_its_group_statement(
    home, ec2_client, dlami, capsys
):
    """The detached run's role holds asg.instance_role_statements (a list Resource): `fab train`
    widening it must read the policy back, add the prefix and keep SetDesiredCapacity."""
    from ec2.cloud import asg

    record = launch(config(), "exp1", wait_ssh=False, s3=s3scope.for_run("s3://bci-data/hdf5", None, None))
    iam_client = aws.client("iam", "us-east-1")
    owner = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Arn"]
    group = asg.instance_role_statements("us-east-1", iam.account_of(owner), "exp1")
    have = s3scope.grants_in(_policy(iam_client, "spotrun-us-east-1-exp1"))
    iam.put_policy(iam_client, "spotrun-us-east-1-exp1", have, owner, extra=group)

    assert s3scope.grants_in(_policy(iam_client, "spotrun-us-east-1-exp1")) == have
    want = s3scope.for_run("s3://bci-data/hdf5", "s3://bci-ckpt/runs/exp2", None)
    added = iam.widen_for_instance(ec2_client, iam_client, record.instance_id, want, owner)
    assert added == [Grant("bci-ckpt", "runs/exp2", WRITE)]
    document = _policy(iam_client, "spotrun-us-east-1-exp1")
    assert [st for st in document["Statement"] if "autoscaling:SetDesiredCapacity" in st["Action"]] == group
    assert set(s3scope.grants_in(document)) == {Grant("bci-data", "hdf5", READ), *added}


def test_policy_reader_takes_any_statement_shape():
    """An older detached role (its group statement's Sid began "Spotrun"), a one-statement
    document and list Resources all read back: S3 grants as grants, the rest kept whole."""
    old_group = {
        "Sid": "SpotrunOwnGroup",
        "Effect": "Allow",
        "Action": ["autoscaling:SetDesiredCapacity"],
        "Resource": [GROUP],
    }
    listed = {
        "Sid": "SpotrunWrite0",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject"],
        "Resource": ["arn:aws-cn:s3:::bci-ckpt/runs/a/*", "arn:aws-cn:s3:::bci-ckpt/runs/b/*"],
    }
    document = {"Version": "2012-10-17", "Statement": [old_group, listed, "not a statement"]}
    assert s3scope.grants_in(document) == [
        Grant("bci-ckpt", "runs/a", WRITE),
        Grant("bci-ckpt", "runs/b", WRITE),
    ]
    assert s3scope.extra_statements(document) == [old_group]
    single = {"Version": "2012-10-17", "Statement": old_group}
    assert s3scope.grants_in(single) == [] and s3scope.extra_statements(single) == [old_group]


@pytest.mark.parametrize(
    ("region", "partition"), [("us-east-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")]
)
def test_arns_use_the_accounts_partition(region, partition):
    from ec2.cloud import asg

    [statement] = asg.instance_role_statements(region, "123456789012", "exp1")
    assert statement["Resource"] == [
        f"arn:{partition}:autoscaling:{region}:123456789012:autoScalingGroup:*:autoScalingGroupName/spotrun-exp1"
    ]
    caller = f"arn:{partition}:iam::123456789012:user/dev"
    document = s3scope.policy_document(RUN, iam.partition_of(caller), [statement])
    resources = _resources(document) + [r for r in _resources(iam.caller_policy(caller)) if r != "*"]
    assert resources and all(r.startswith(f"arn:{partition}:") for r in resources)


def _resources(document: dict) -> list[str]:
    return [
        r
        for st in document["Statement"]
        for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
    ]
