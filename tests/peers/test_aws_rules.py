"""The gate in front of moto (tests/peers/aws_gate.py) refuses what AWS documents it refuses: one
violating request per rule of tests/peers/aws_rules.py's table, sent by a real boto3 client (and
one from a subprocess, as `fab` sends them), answered with the documented code; the conforming
form of the same request passes on to moto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid

import boto3
import botocore.exceptions
import pytest
from moto.ec2.models.amis import AMIS

from tests.peers.aws_rules import RULES, unflatten


@pytest.fixture(scope="module")
def world(moto_server, tmp_path_factory):
    """One moto state for the module (a reset costs seconds): the tests' requests are refused before
    they reach moto, and what a test does create has a name of its own."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("AWS_")]:
            mp.delenv(var)
        mp.setenv("AWS_ENDPOINT_URL", moto_server)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        yield _clients()


@pytest.fixture
def aws(world, aws_gate):
    aws_gate.reset()  # this test's refusals only
    world["sg"] = world["ec2"].create_security_group(GroupName=_unique("efa"), Description="members")[
        "GroupId"
    ]
    return world


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _clients() -> dict:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    image = AMIS[0]["ami_id"]  # one of moto's own images (describe_images takes seconds in moto)
    subnets = {
        s["AvailabilityZone"]: s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    }
    return {
        "ec2": ec2,
        "asg": boto3.client("autoscaling", region_name="us-east-1"),
        "iam": boto3.client("iam", region_name="us-east-1"),
        "s3": boto3.client("s3", region_name="us-east-1"),
        "image": image,
        "subnet": subnets["us-east-1a"],
        "subnet_b": subnets["us-east-1b"],
    }


def _self_rule(group: str) -> list[dict]:
    return [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}]


def _run(a, itype: str = "t3.micro", **params):
    return a["ec2"].run_instances(ImageId=a["image"], InstanceType=itype, MinCount=1, MaxCount=1, **params)


def _nic(a, **extra) -> dict:
    return {"DeviceIndex": 0, "SubnetId": a["subnet"], "Groups": [a["sg"]], **extra}


def _tags(n: int, key: str = "k", value: str = "v") -> list[dict]:
    return [{"Key": f"{key}{i}" if n > 1 else key, "Value": value} for i in range(n)]


def _template(a, name: str = "", **data) -> str:
    name = name or _unique("tpl")
    a["ec2"].create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": a["image"], **data}
    )
    return name


def _group(a, name: str = "", **params):
    name = name or _unique("grp")
    spec = {"LaunchTemplateName": params.pop("template", None) or _template(a), "Version": "$Latest"}
    base = {"LaunchTemplate": spec, "VPCZoneIdentifier": a["subnet"]}
    a["asg"].create_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=1, **{**base, **params})


def _role(a, name: str = "", **params):
    name = name or _unique("r")
    a["iam"].create_role(RoleName=name, AssumeRolePolicyDocument="{}", **params)


def _big_policy() -> str:
    resources = [f"arn:aws:s3:::bucket/prefix-{i:05d}/*" for i in range(400)]
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources}],
        }
    )


def _efa_group_in_only(a):
    a["ec2"].authorize_security_group_ingress(GroupId=a["sg"], IpPermissions=_self_rule(a["sg"]))
    _run(a, "p4d.24xlarge", NetworkInterfaces=[_nic(a, InterfaceType="efa")])


def _mixed_spot_template(a):
    template = _template(a, InstanceMarketOptions={"MarketType": "spot"})
    policy = {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": template, "Version": "$Latest"},
            "Overrides": [{"InstanceType": "g5.xlarge"}],
        },
        "InstancesDistribution": {"OnDemandPercentageAboveBaseCapacity": 0},
    }
    a["asg"].create_auto_scaling_group(
        AutoScalingGroupName="grp",
        MinSize=0,
        MaxSize=1,
        MixedInstancesPolicy=policy,
        VPCZoneIdentifier=a["subnet"],
    )


# One request that breaks each rule (and, by construction, no rule before it in the table).
BREAK = {
    "ec2-run-nic-vs-groups": lambda a: _run(a, SecurityGroupIds=[a["sg"]], NetworkInterfaces=[_nic(a)]),
    "ec2-run-nic-vs-subnet": lambda a: _run(a, SubnetId=a["subnet"], NetworkInterfaces=[_nic(a)]),
    "ec2-run-nic-subnet": lambda a: _run(a, NetworkInterfaces=[{"DeviceIndex": 0, "Groups": [a["sg"]]}]),
    "ec2-run-nic-device-index": lambda a: _run(a, NetworkInterfaces=[{"SubnetId": a["subnet"]}]),
    "ec2-run-public-ip-one-nic": lambda a: _run(
        a, NetworkInterfaces=[_nic(a, AssociatePublicIpAddress=True), _nic(a, DeviceIndex=1)]
    ),
    "ec2-run-public-ip-eth0": lambda a: _run(
        a, NetworkInterfaces=[_nic(a, DeviceIndex=1, AssociatePublicIpAddress=True)]
    ),
    "ec2-run-public-ip-new-nic": lambda a: _run(
        a,
        NetworkInterfaces=[
            {"DeviceIndex": 0, "NetworkInterfaceId": "eni-0123", "AssociatePublicIpAddress": True}
        ],
    ),
    "ec2-run-efa-type": lambda a: _run(a, "g4dn.xlarge", NetworkInterfaces=[_nic(a, InterfaceType="efa")]),
    "ec2-run-efa-group": _efa_group_in_only,
    "ec2-run-zone-vs-subnet": lambda a: _run(
        a, SubnetId=a["subnet_b"], Placement={"AvailabilityZone": "us-east-1a"}
    ),
    "ec2-tags-per-resource": lambda a: a["ec2"].create_security_group(
        GroupName="x",
        Description="x",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(51)}],
    ),
    "ec2-tag-key-length": lambda a: a["ec2"].create_tags(Resources=[a["sg"]], Tags=_tags(1, key="k" * 129)),
    "ec2-tag-value-length": lambda a: a["ec2"].create_tags(
        Resources=[a["sg"]], Tags=_tags(1, value="v" * 257)
    ),
    "ec2-tag-aws-prefix": lambda a: a["ec2"].create_tags(Resources=[a["sg"]], Tags=_tags(1, key="aws:owner")),
    "ec2-launch-template-name": lambda a: _template(a, name="my template!"),
    "ec2-key-pair-name": lambda a: a["ec2"].create_key_pair(KeyName="k" * 256),
    "ec2-security-group-name": lambda a: a["ec2"].create_security_group(GroupName="sg-mine", Description="x"),
    "asg-name-length": lambda a: _group(a, name="g" * 256),
    "asg-mixed-template-market": _mixed_spot_template,
    "asg-subnets-in-zones": lambda a: _group(
        a, AvailabilityZones=["us-east-1a"], VPCZoneIdentifier=a["subnet_b"]
    ),
    "asg-tags-per-group": lambda a: _group(a, Tags=_tags(51)),
    "asg-tag-lengths": lambda a: _group(a, Tags=_tags(1, value="v" * 257)),
    "asg-tag-aws-prefix": lambda a: _group(a, Tags=_tags(1, key="aws:cost")),
    "iam-role-name": lambda a: _role(a, name="r" * 65),
    "iam-instance-profile-name": lambda a: a["iam"].create_instance_profile(InstanceProfileName="p" * 129),
    "iam-role-description": lambda a: _role(a, Description="d" * 1001),
    "iam-role-policy-size": lambda a: (
        _role(a, name="big-policy"),
        a["iam"].put_role_policy(RoleName="big-policy", PolicyName="p", PolicyDocument=_big_policy()),
    ),
    "iam-tags-per-resource": lambda a: _role(a, Tags=_tags(51)),
    "iam-tag-lengths": lambda a: _role(a, Tags=_tags(1, key="k" * 129)),
    "iam-tag-aws-prefix": lambda a: _role(a, Tags=_tags(1, key="aws:team")),
    "s3-key-length": lambda a: (
        a["s3"].create_bucket(Bucket="long-keys"),
        a["s3"].put_object(Bucket="long-keys", Key="k" * 1025, Body=b"x"),
    ),
}


def test_the_table_has_twenty_rules_or_more_each_with_its_page_and_a_breaking_example():
    ids = [r.rule_id for r in RULES]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)
    assert all(r.source.startswith("https://docs.aws.amazon.com/") for r in RULES)
    assert set(BREAK) == set(ids)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule_id)
def test_a_request_that_breaks_the_rule_is_refused_with_the_documented_code(aws, aws_gate, rule):
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        BREAK[rule.rule_id](aws)
    assert refused.value.response["Error"]["Code"] == rule.code
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == rule.status
    assert [r for r, _ in aws_gate.refused] == [rule.rule_id]


def test_conforming_requests_pass_to_moto(aws, aws_gate):
    # An EFA interface in a group that allows all traffic in from and out to itself, its subnet in
    # the interface, on a type with EFA: moto launches it.
    a = aws
    a["ec2"].authorize_security_group_ingress(GroupId=a["sg"], IpPermissions=_self_rule(a["sg"]))
    a["ec2"].authorize_security_group_egress(GroupId=a["sg"], IpPermissions=_self_rule(a["sg"]))
    nic = _nic(a, InterfaceType="efa", AssociatePublicIpAddress=True)
    [instance] = _run(
        a, "p4d.24xlarge", NetworkInterfaces=[nic], Placement={"AvailabilityZone": "us-east-1a"}
    )["Instances"]
    assert instance["SubnetId"] == a["subnet"]
    _group(a, AvailabilityZones=["us-east-1a"], Tags=_tags(50))
    _role(a, name="r" * 64, Tags=_tags(50))
    a["s3"].create_bucket(Bucket="keys")
    a["s3"].put_object(Bucket="keys", Key="k" * 1024, Body=b"x")
    assert aws_gate.refused == []


def test_a_subprocess_is_held_to_the_rules_too(aws, aws_gate):
    """`fab` and the boot run as subprocesses that reach AWS through AWS_ENDPOINT_URL alone."""
    script = (
        "import boto3, botocore.exceptions\n"
        "try:\n"
        "    boto3.client('ec2').create_key_pair(KeyName='k' * 300)\n"
        "except botocore.exceptions.ClientError as e:\n"
        "    print(e.response['Error']['Code'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True
    )
    assert done.stdout.strip() == "InvalidParameterValue", done.stderr
    assert aws_gate.refused == [("ec2-key-pair-name", "CreateKeyPair")]


def test_query_parameters_are_read_as_aws_nests_them():
    flat = {
        "NetworkInterface.1.SubnetId": "subnet-1",
        "NetworkInterface.1.SecurityGroupId.1": "sg-1",
        "NetworkInterface.2.DeviceIndex": "1",
        "Tags.member.1.Key": "k",
        "MixedInstancesPolicy.LaunchTemplate.Overrides.member.2.InstanceType": "g5.xlarge",
    }
    nested = unflatten(flat)
    assert nested["NetworkInterface"] == [
        {"SubnetId": "subnet-1", "SecurityGroupId": ["sg-1"]},
        {"DeviceIndex": "1"},
    ]
    assert nested["Tags"] == [{"Key": "k"}]
    assert nested["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"] == [{"InstanceType": "g5.xlarge"}]
