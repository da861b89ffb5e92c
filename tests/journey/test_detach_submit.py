"""`fab run --detach`'s submit against moto's server (EC2, S3, STS, Auto Scaling): what it creates
is read back from AWS, not from our own requests; bad input and refused permissions leave nothing."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

import boto3
import pytest

from common import aws
from common.s3uri import split_s3
from ec2.cloud import asg, bundle, propagation
from ec2.errors import AwsError, ConfigError
from ec2.journey import detach
from ec2.remote import detached
from tests.peers.detach_plan import BUCKET, CKPT, DenyingAutoScaling, cfg, plan


@pytest.fixture
def cloud(aws_env, home, dlami, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the code the bundle takes
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return dlami


def template_data(ec2) -> dict:
    versions = ec2.describe_launch_template_versions(LaunchTemplateName="spotrun-job")[
        "LaunchTemplateVersions"
    ]
    return versions[0]["LaunchTemplateData"]


def test_submit_creates_template_group_bundle_and_record(cloud, capsys):
    done = detach.submit(cfg(), "job", plan(), poll_s=0.2)
    ec2, autoscaling, s3 = boto3.client("ec2"), boto3.client("autoscaling"), boto3.client("s3")

    data = template_data(ec2)
    assert data["ImageId"] == cloud
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    [disk] = data["BlockDeviceMappings"]
    assert disk["Ebs"]["Encrypted"] is True and disk["Ebs"]["VolumeType"] == "gp3"
    assert data["KeyName"] == "spotrun" and data["IamInstanceProfile"] == {"Name": "spotrun-job-profile"}
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    [sg] = ec2.describe_security_groups(GroupNames=["spotrun-ssh"])["SecurityGroups"]
    assert data["SecurityGroupIds"] == [sg["GroupId"]]
    tagged = {t["ResourceType"]: {x["Key"]: x["Value"] for x in t["Tags"]} for t in data["TagSpecifications"]}
    assert tagged["instance"]["spotrun:name"] == tagged["volume"]["spotrun:name"] == "job"
    assert "InstanceMarketOptions" not in data  # a mixed instances policy refuses it
    user_data = base64.b64decode(data["UserData"]).decode()
    root = detached.root_for(CKPT, "job")
    assert f"-m ec2.remote.boot --root {root}" in user_data
    assert "shutdown -h +" in user_data and done.state.bundle_uri in user_data

    [group] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["spotrun-job"])[
        "AutoScalingGroups"
    ]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 1, 1)
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["g4dn.xlarge", "g5.xlarge"]
    dist = policy["InstancesDistribution"]
    assert dist["OnDemandPercentageAboveBaseCapacity"] == 0
    assert dist["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert not group.get("CapacityRebalance")
    [subnet] = ec2.describe_subnets(
        Filters=[
            {"Name": "availability-zone", "Values": ["us-east-1a"]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"]
    assert group["VPCZoneIdentifier"] == subnet["SubnetId"]
    assert {t["Key"]: t["Value"] for t in group["Tags"]}[asg.ROOT_TAG] == root

    # The first instance is the group's, tagged by the template.
    assert [i["InstanceId"] for i in group["Instances"]] == [done.instance_id]
    [inst] = ec2.describe_instances(InstanceIds=[done.instance_id])["Reservations"][0]["Instances"]
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}["spotrun:name"] == "job"

    # The record and the bundle sit beside the checkpoints; the bundle is what `fab sync` sends.
    state = detached.load(s3, root)
    assert state.command == plan().command and state.max_attempts == 3 and state.group == "spotrun-job"
    assert state.watcher_args[:2] == ["--signal", "USR1"] and "--checkpoint-dir" in state.watcher_args
    bucket, key = split_s3(done.state.bundle_uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    names = tarfile.open(fileobj=io.BytesIO(body)).getnames()
    assert {"ec2/remote/boot.py", "scripts/setup_instance.sh", "requirements.lock"} <= set(names)
    assert not [
        n for n in names if n.startswith((".git/", ".venv/", "data/", "outputs/")) or n.endswith(".pem")
    ]
    out = capsys.readouterr().out
    assert "fab watch --name job" in out


def test_bundle_is_content_addressed(cloud, tmp_path):
    (tmp_path / "a.py").write_text("print(1)\n")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "x").write_text("no")
    (tmp_path / ".env").write_text("SECRET=1")
    # A git worktree: .git is a file, and the venv a symlink (a `.venv/` pattern let both through).
    (tmp_path / ".git").write_text("gitdir: /elsewhere\n")
    (tmp_path / ".venv").symlink_to("/usr")
    one = bundle.build(tmp_path)
    (tmp_path / "a.py").touch()  # a new mtime is not new content
    assert bundle.build(tmp_path).sha256 == one.sha256
    assert tarfile.open(fileobj=io.BytesIO(one.data)).getnames() == [".gitignore", "a.py"]
    s3 = boto3.client("s3")
    uri, uploaded = bundle.upload(s3, f"s3://{BUCKET}/b", one)
    assert uploaded and uri.endswith(one.filename)
    assert bundle.upload(s3, f"s3://{BUCKET}/b", one) == (uri, False)
    (tmp_path / "a.py").write_text("print(2)\n")
    assert bundle.build(tmp_path).sha256 != one.sha256


def nothing_created() -> None:
    assert boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert boto3.client("ec2").describe_launch_templates()["LaunchTemplates"] == []
    assert boto3.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_local_checkpoint_dir_is_one_line_and_nothing_is_created(cloud):
    with pytest.raises(ConfigError) as e:
        detach.submit(cfg(), "job", plan("trained_models/job/checkpoint"))
    assert str(e.value) == (
        "a detached run keeps its checkpoints in S3 (the laptop may be gone when the next instance "
        "resumes from them); checkpoint_dir is trained_models/job/checkpoint: pass --args "
        "'checkpoint_dir=s3://BUCKET/PREFIX' or set it in the train config"
    )
    nothing_created()


@pytest.mark.parametrize("action", ["autoscaling:CreateAutoScalingGroup", "iam:PassRole"])
def test_refused_group_names_the_permission_and_takes_everything_back(cloud, monkeypatch, action):
    real = aws.client

    def client(service, region=None, profile=None, **kw):
        c = real(service, region, profile, **kw)
        return DenyingAutoScaling(c, action) if service == "autoscaling" else c

    monkeypatch.setattr(aws, "client", client)
    with pytest.raises(AwsError) as e:
        detach.submit(cfg(), "job", plan())
    assert f"lacks {action}" in str(e.value) and "\n" not in str(e.value)
    nothing_created()


NO_SPOT = (
    "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available "
    "that matches your request. Launching EC2 instance failed."
)
# A spot launch refused for a reason on-demand would not cure: the message still begins "Could not
# launch Spot Instances" (EC2's InvalidParameterValue for a profile IAM has not propagated yet).
PROFILE_NOT_YET = (
    "Could not launch Spot Instances. InvalidParameterValue - Value (spotrun-us-east-1-job) for parameter "
    "iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name. Launching EC2 instance failed."
)
SPOT_QUOTA = (
    "Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded. "
    "Launching EC2 instance failed."
)


class SpotStarvedAutoScaling:
    """moto's autoscaling client for a region without spot capacity, which moto cannot play: until
    the group is switched to on-demand, it shows no instance and one failed launch activity
    (the documented DescribeScalingActivities shape and message)."""

    def __init__(self, real, message: str = NO_SPOT):
        self._real, self.on_demand, self.message = real, False, message

    def describe_auto_scaling_groups(self, **kw):
        answer = self._real.describe_auto_scaling_groups(**kw)
        if not self.on_demand:
            for g in answer["AutoScalingGroups"]:
                g["Instances"] = []
        return answer

    def get_paginator(self, operation):
        if operation != "describe_scaling_activities" or self.on_demand:
            return self._real.get_paginator(operation)
        failed = {
            "ActivityId": "5e0f2a8b-0000-4000-8000-000000000001",
            "AutoScalingGroupName": "spotrun-job",
            "Description": f"Launching a new EC2 instance.  Status Reason: {self.message}",
            "Cause": "At 2026-11-30T06:00:00Z an instance was started in response to a difference between "
            "desired and actual capacity, increasing the capacity from 0 to 1.",
            "StatusCode": "Failed",
            "StatusMessage": self.message,
        }

        class Pages:
            def paginate(self, **kw):
                return [{"Activities": [failed]}]

        return Pages()

    def update_auto_scaling_group(self, **kw):
        self._real.update_auto_scaling_group(**kw)
        dist = kw["MixedInstancesPolicy"]["InstancesDistribution"]
        self.on_demand = dist["OnDemandPercentageAboveBaseCapacity"] == 100

    def __getattr__(self, name):
        return getattr(self._real, name)


def _starved(monkeypatch, message: str = NO_SPOT) -> None:
    real = aws.client
    starved = {}

    def client(service, region=None, profile=None, **kw):
        c = real(service, region, profile, **kw)
        if service != "autoscaling":
            return c
        return starved.setdefault("asg", SpotStarvedAutoScaling(c, message))

    monkeypatch.setattr(aws, "client", client)


@pytest.mark.parametrize(
    ("message", "matched"),
    [(NO_SPOT, "InsufficientInstanceCapacity"), (SPOT_QUOTA, "MaxSpotInstanceCountExceeded")],
)
def test_spot_then_on_demand_switches_the_group_when_spot_fails(cloud, monkeypatch, capsys, message, matched):
    _starved(monkeypatch, message)
    done = detach.submit(cfg("market=spot-then-on-demand"), "job", plan(), poll_s=0.1)
    out = capsys.readouterr().out
    assert f"spot failed ({matched}): the group now launches on-demand" in out
    [group] = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    dist = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert dist["OnDemandPercentageAboveBaseCapacity"] == 100  # read back from moto
    assert [i["InstanceId"] for i in group["Instances"]] == [done.instance_id]


def test_spot_then_on_demand_keeps_spot_on_a_failure_that_is_not_spots(cloud, monkeypatch, capsys):
    """A failed spot launch whose cause is not spot capacity (the instance profile IAM has not
    propagated yet) is shown, and the group stays spot: on-demand would not cure it."""
    _starved(monkeypatch, PROFILE_NOT_YET)
    with pytest.raises(AwsError, match="launched no instance"):
        detach.submit(cfg("market=spot-then-on-demand", "running_timeout_s=1"), "job", plan(), poll_s=0.1)
    out = capsys.readouterr().out
    assert "iamInstanceProfile.name is invalid" in out and "now launches on-demand" not in out
    [group] = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0


def test_spot_only_does_not_switch(cloud, monkeypatch):
    real = aws.client
    starved = {}

    def client(service, region=None, profile=None, **kw):
        c = real(service, region, profile, **kw)
        return starved.setdefault("asg", SpotStarvedAutoScaling(c)) if service == "autoscaling" else c

    monkeypatch.setattr(aws, "client", client)
    with pytest.raises(AwsError) as e:
        detach.submit(cfg("running_timeout_s=1"), "job", plan(), poll_s=0.1)
    assert "launched no instance" in str(e.value) and "fab terminate --name job" in str(e.value)
    [group] = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0


def test_detached_user_data_is_bash_with_the_guards_then_the_boot(tmp_path):
    """The user data as text (tests/cloud/test_userdata_detached.py runs it): the cost guards, then the
    boot, which fetches the bundle with boto3 (no `aws` binary) and gives up on any failure."""
    import re
    import subprocess

    from ec2.cloud.userdata import USER_DATA_MAX, build_detached_user_data

    text = build_detached_user_data(
        6,
        30,
        2222,
        root="s3://b/runs/x-spotrun-job",
        bundle_uri="s3://b/runs/x-spotrun-job/bundle-0123456789abcdef.tar.gz",
        remote_dir="~/spotrun",
        login_user="ubuntu",
        group="spotrun-job",
        region="us-east-1",
    )
    script = tmp_path / "user-data"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash" and "shutdown -h +360 'spotrun: max_hours reached'" in lines
    boot = lines[lines.index("SPOTRUN_GIVEUP") + 1 :]
    assert len([b for b in boot if not b.startswith("#")]) <= 16  # a few lines; the logic is in boot.py
    assert "aws s3" not in text and "boto3" in text
    assert "runuser -u ubuntu -- tar -xzf" in text
    assert "-m ec2.remote.boot --root s3://b/runs/x-spotrun-job --group spotrun-job ||" in boot[-1]
    # The instance role only: no credentials are set or carried (giveup.py only reads the variables).
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)=", text)
    assert len(text.encode()) <= USER_DATA_MAX


def test_terminate_all_removes_detached_groups_first(cloud, capsys):
    from invoke import Context

    from tasks import lifecycle

    detach.submit(cfg(), "job", plan(), poll_s=0.2)
    sets = ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]", "region=us-east-1"]
    lifecycle.terminate(Context(), all_=True, yes=True, set_=sets)
    assert "deleted Auto Scaling group spotrun-job" in capsys.readouterr().out
    assert boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert boto3.client("ec2").describe_launch_templates()["LaunchTemplates"] == []
    live = [
        i
        for r in boto3.client("ec2").describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]
    assert live == []


def test_instance_role_statements_are_scoped_to_the_group(aws_env):
    import json

    statements = asg.instance_role_statements("us-east-1", "123456789012", "job")
    assert [(st["Action"], st["Resource"]) for st in statements] == [
        (
            ["autoscaling:SetDesiredCapacity", "autoscaling:CreateOrUpdateTags"],
            [
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/spotrun-job"
            ],
        )
    ]
    # A valid policy document as IAM parses it (moto's IAM validates the grammar).
    iam = boto3.client("iam")
    iam.create_role(
        RoleName="r", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )
    iam.put_role_policy(
        RoleName="r",
        PolicyName="p",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )


def test_auto_profile_reaches_the_runs_prefixes_and_its_own_group(cloud):
    """iam_instance_profile: auto (h-iam's role per machine) carries the detached run's extra
    statement and its root prefix; read back from moto's IAM and the launch template."""
    import json

    from ec2.cloud import iam as iam_mod

    detach.submit(cfg("iam_instance_profile=auto"), "job", plan(), poll_s=0.2)
    iam = boto3.client("iam")
    role = iam_mod.role_name("job", "us-east-1")
    document = iam.get_role_policy(RoleName=role, PolicyName=iam_mod.POLICY_NAME)["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    resources = json.dumps(document["Statement"])
    assert "autoScalingGroupName/spotrun-job" in resources
    assert [
        st for st in document["Statement"] if "autoscaling:SetDesiredCapacity" in json.dumps(st["Action"])
    ]
    root = detached.root_for(CKPT, "job")
    assert f"arn:aws:s3:::{BUCKET}/{root.split(BUCKET + '/')[1]}/*" in resources
    assert f"arn:aws:s3:::{BUCKET}/runs/job/checkpoint/*" in resources
    assert "autoscaling:*" not in resources and '"*"' not in resources
    [profile] = iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]
    assert template_data(boto3.client("ec2"))["IamInstanceProfile"] == {"Arn": profile["Arn"]}


def test_fab_run_has_no_one_letter_flags():
    """`--detach` spends money: invoke's automatic short flags gave it `-h`, so `fab run -h` would
    have submitted a run instead of showing help."""
    from tasks import managed

    names = [n for a in managed.run.get_arguments() for n in a.names]
    assert "detach" in names and all(len(n) > 1 for n in names)


def _settle_when_waiting(aws_gate, lines: list[str]):
    """An `out` that records lines and, at the first "does not see ... yet", lets the gate's IAM
    lag end: the profile propagates while spotrun waits, deterministically."""

    def out(line: str) -> None:
        lines.append(line)
        if "does not see instance profile" in line:
            aws_gate.lag.settle()

    return out


def test_a_new_profile_auto_scaling_cannot_see_yet_is_waited_for(cloud, aws_gate, monkeypatch):
    """IAM is eventually consistent: Auto Scaling refuses a launch template whose instance profile
    was made seconds ago (ValidationError "... Invalid IAM Instance Profile name"; the gate answers
    so, as AWS does). The submit waits, saying for what, and the group is made."""
    monkeypatch.setattr(aws_gate.lag, "lag_s", 1000.0)  # until the profile "propagates" below
    monkeypatch.setattr(propagation, "DELAYS_S", (0, 0, 0))
    lines: list[str] = []
    detach.submit(
        cfg("iam_instance_profile=auto"), "job", plan(), poll_s=0.2, out=_settle_when_waiting(aws_gate, lines)
    )
    assert ("iam-lag", "CreateAutoScalingGroup") in aws_gate.refused
    assert (
        "      Auto Scaling does not see instance profile spotrun-us-east-1-job yet (IAM propagates); "
        "retry in 0 s"
    ) in lines
    [group] = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert group["AutoScalingGroupName"] == "spotrun-job"


def test_a_profile_that_never_propagates_fails_bounded_and_takes_everything_back(
    cloud, aws_gate, monkeypatch
):
    monkeypatch.setattr(aws_gate.lag, "lag_s", 1000.0)
    monkeypatch.setattr(propagation, "DELAYS_S", (0, 0))
    lines: list[str] = []
    with pytest.raises(AwsError) as e:
        detach.submit(cfg("iam_instance_profile=auto"), "job", plan(), poll_s=0.2, out=lines.append)
    assert "Invalid IAM Instance Profile" in str(e.value) and "\n" not in str(e.value)
    assert (
        "still refused after waiting 0 s for IAM to propagate instance profile spotrun-us-east-1-job"
        in str(e.value)
    )
    assert aws_gate.refused.count(("iam-lag", "CreateAutoScalingGroup")) == 3  # the first try and two more
    assert sum("does not see instance profile" in line for line in lines) == 2
    nothing_created()
