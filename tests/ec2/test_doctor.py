"""`fab doctor` and the preflight of `fab launch`, on moto's server (STS, EC2, SSM, IAM, S3).

moto's Service Quotas knows no EC2 quotas and moto has no SimulatePrincipalPolicy: those rows are
"unknown" there, as the production code shows any check it cannot make. Where a test needs a quota
value, AWS's documented GetServiceQuota / RequestServiceQuotaIncrease responses are injected at the
botocore level (tests/peers/inject.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

from common import aws
from ec2 import doctor, paths
from ec2.cloud import accountsetup, keys
from ec2.config import load_aws_config
from ec2.errors import ToolkitError
from ec2.remote import tools
from tasks import lifecycle
from tasks import preflight as t
from tests.peers.inject import answer, json_answer
from tests.peers.moto_ec2 import CALLER_IP

SETS = ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]", "instance_types=[g5.xlarge]"]
RUN_ARGS = "dataset.dataset_dir=s3://bci-data/hdf5 checkpoint_dir=s3://bci-ckpt/runs/exp1"


def _doctor(capsys, *sets, **kwargs):
    """The task as `fab doctor` runs it: (exit code, stdout)."""
    try:
        t.doctor(Context(), set_=[*SETS, *sets], **kwargs)
        code = 0
    except Exit as e:
        code = e.code
    return code, capsys.readouterr().out


def _rows(out: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        mark, _, rest = line.partition(" ")
        if mark in ("✓", "✗", "unknown"):
            name = rest.strip().split("  ")[0]
            rows.setdefault(name, []).append(mark)
    return rows


def test_doctor_fails_naming_s3_when_the_bucket_is_missing_then_passes(home, ec2_client, dlami, capsys):
    run = {"train_config": "configs/demo.yaml", "args": RUN_ARGS}
    code, out = _doctor(capsys, **run)
    assert code == 1
    assert "✗       S3 bucket" in out and "bucket bci-data does not exist" in out
    assert "fix: create it (aws s3 mb s3://bci-data --region us-east-1) or fix dataset.dataset_dir" in out
    assert out.strip().endswith("failed: S3 bucket, S3 bucket")

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bci-data")
    s3.create_bucket(Bucket="bci-ckpt")
    code, out = _doctor(capsys, **run)
    assert code == 1 and "s3://bci-data/hdf5 holds no session folders" in out  # a bucket, but no data

    for session in ("t15.2023.08.11", "t15.2023.08.13"):
        s3.put_object(Bucket="bci-data", Key=f"hdf5/{session}/data_train.hdf5", Body=b"x")
    code, out = _doctor(capsys, **run)
    rows = _rows(out)
    assert code == 0, out
    assert rows["region"] == rows["credentials"] == rows["AMI"] == ["✓"]
    assert rows["S3 bucket"] == ["✓", "✓"] and rows["S3 dataset.dataset_dir"] == ["✓"]
    assert "2 session folder(s)" in out and "s3://bci-ckpt/runs/exp1 writable" in out
    # The marker written to prove the checkpoint prefix writable is gone again.
    assert s3.list_objects_v2(Bucket="bci-ckpt").get("KeyCount", 0) == 0
    # What moto cannot answer is "unknown" with the reason, and does not fail the run.
    assert rows["vCPU quota (g)"] == ["unknown"] and "NoSuchResourceException" in out
    assert rows["instance profile"] == ["unknown"] and "SimulatePrincipalPolicy" in out
    assert rows["key pair"] == ["✓"] and rows["security group"] == ["✓"]
    assert rows["ssh"] == rows["rsync"] == ["✓"]
    assert out.strip().splitlines()[-1].startswith("all checks passed (")


def _quota_answers(values: dict[str, float]):
    """AWS's GetServiceQuota response for each code in ``values`` (documented shape)."""
    sq = aws.client("service-quotas", "us-east-1", None, attempts=2)

    def get(request):
        code = json.loads(request.body)["QuotaCode"]
        return json_answer(
            {
                "Quota": {
                    "ServiceCode": "ec2",
                    "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                    "QuotaArn": f"arn:aws:servicequotas:us-east-1:123456789012:ec2/{code}",
                    "QuotaCode": code,
                    "QuotaName": "injected",
                    "Value": values[code],
                    "Unit": "None",
                    "Adjustable": True,
                    "GlobalQuota": False,
                }
            }
        )

    return answer(sq, "GetServiceQuota", get)


def test_quota_rows_name_the_code_and_the_request(home, ec2_client, dlami, capsys):
    asked = _quota_answers({"L-3819A6DF": 0.0, "L-7212CCBC": 96.0, "L-DB2E81BA": 8.0})
    code, out = _doctor(capsys, "instance_types=[g5.xlarge,g4dn.2xlarge,p4d.24xlarge]")
    rows = _rows(out)
    assert code == 1 and rows["vCPU quota (g)"] == ["✗"] and rows["vCPU quota (p)"] == ["✓"]
    assert "All G and VT Spot Instance Requests (L-3819A6DF): 0 vCPUs; g4dn.2xlarge needs 8" in out
    assert "All P4, P3 and P2 Spot Instance Requests (L-7212CCBC): 96 vCPUs; p4d.24xlarge needs 96" in out
    assert (
        "fix: fab doctor --request-quota 8 (or: aws service-quotas request-service-quota-increase "
        "--service-code ec2 --quota-code L-3819A6DF --desired-value 8 --region us-east-1)"
    ) in out
    assert {json.loads(r.body)["QuotaCode"] for r in asked} == {"L-3819A6DF", "L-7212CCBC"}

    # spot-then-on-demand passes when either market's quota suffices.
    code, out = _doctor(capsys, "market=spot-then-on-demand")
    assert (
        _rows(out)["vCPU quota (g)"] == ["✓"]
        and "Running On-Demand G and VT instances (L-DB2E81BA): 8" in out
    )


def test_p5_spot_is_checked_and_requested_against_its_own_quota(home, ec2_client, dlami, capsys):
    """P5 spot has its own quota ("All P5 Spot Instance Requests", L-C4BD4855; EC2 user guide,
    "Spot Instance quotas"): a P4 quota of 192 vCPUs says nothing about a p5.48xlarge."""
    asked = _quota_answers({"L-7212CCBC": 192.0, "L-C4BD4855": 0.0})
    code, out = _doctor(capsys, "instance_types=[p5.48xlarge,p4d.24xlarge]")
    rows = _rows(out)
    assert code == 1 and rows["vCPU quota (p5)"] == ["✗"] and rows["vCPU quota (p)"] == ["✓"], out
    assert "All P5 Spot Instance Requests (L-C4BD4855): 0 vCPUs; p5.48xlarge needs 192" in out
    assert "--quota-code L-C4BD4855 --desired-value 192" in out
    assert {json.loads(r.body)["QuotaCode"] for r in asked} == {"L-7212CCBC", "L-C4BD4855"}

    sq = aws.client("service-quotas", "us-east-1")
    filed = answer(
        sq,
        "RequestServiceQuotaIncrease",
        lambda request: json_answer(
            {"RequestedQuota": {"Id": "r1", "Status": "PENDING", **json.loads(request.body)}}
        ),
    )
    code, out = _doctor(capsys, "instance_types=[p5.48xlarge]", request_quota="192")
    assert code == 0 and "requested 192 vCPUs of All P5 Spot Instance Requests (L-C4BD4855)" in out
    assert [json.loads(r.body)["QuotaCode"] for r in filed] == ["L-C4BD4855"]


def test_request_quota_files_the_increase(home, ec2_client, capsys):
    sq = aws.client("service-quotas", "us-east-1")
    requests = answer(
        sq,
        "RequestServiceQuotaIncrease",
        lambda request: json_answer(
            {
                "RequestedQuota": {
                    "Id": "c1b2c3d4e5f6",
                    "ServiceCode": "ec2",
                    "QuotaCode": json.loads(request.body)["QuotaCode"],
                    "DesiredValue": json.loads(request.body)["DesiredValue"],
                    "Status": "PENDING",
                    "Created": 1767225600.0,
                    "Requester": "arn:aws:iam::123456789012:user/dev",
                }
            }
        ),
    )
    code, out = _doctor(capsys, request_quota="8")
    assert code == 0 and "requested 8 vCPUs of All G and VT Spot Instance Requests (L-3819A6DF)" in out
    assert "PENDING" in out
    assert [json.loads(r.body) for r in requests] == [
        {"ServiceCode": "ec2", "QuotaCode": "L-3819A6DF", "DesiredValue": 8.0}
    ]


def test_key_pair_and_local_key_must_agree(home, ec2_client, dlami, capsys):
    ec2 = aws.client("ec2", "us-east-1")
    pem = keys.ensure_key_pair(ec2, "spotrun", "arn:aws:iam::123456789012:user/dev")
    code, out = _doctor(capsys)
    assert _rows(out)["key pair"] == ["✓"] and f"spotrun matches {pem}" in out
    # Another key under the same name: the pair would not open the instance.
    os.chmod(pem, 0o600)
    pem.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(pem)], check=True)
    os.chmod(pem, 0o400)
    code, out = _doctor(capsys)
    assert code == 1 and _rows(out)["key pair"] == ["✗"] and "is not the private key of EC2 pair" in out
    os.chmod(pem, 0o644)
    code, out = _doctor(capsys)
    assert "readable by others" in out and f"fix: chmod 400 {pem}" in out
    pem.unlink()
    code, out = _doctor(capsys)
    assert "EC2 has pair 'spotrun' but" in out and "is missing" in out


def test_security_group_rule_must_admit_the_caller(home, ec2_client, dlami, checkip, capsys):
    code, out = _doctor(capsys, "ssh_cidr=auto")
    assert f"SSH from {CALLER_IP}/32" in out and _rows(out)["security group"] == ["✓"]
    from ec2.cloud import network

    cfg = load_aws_config(None, ["ssh_cidr=198.51.100.99/32"])
    network.ensure_group(aws.client("ec2", "us-east-1"), cfg, "198.51.100.99/32", "me")
    code, out = _doctor(capsys, "ssh_cidr=auto")
    assert code == 1 and _rows(out)["security group"] == ["✗"]
    assert (
        f"admits SSH from 198.51.100.99/32, not you ({CALLER_IP}/32)" in out and "fix: fab allow-my-ip" in out
    )


@pytest.mark.parametrize(
    "version_line, ok",
    [
        ("rsync  version 3.2.7  protocol version 31", True),
        ("rsync  version 2.6.9  protocol version 29", True),  # works, with less: the upgrade is named
        ("rsync  version 2.6.3  protocol version 28", False),
        ("openrsync: protocol version 27", False),
    ],
)
def test_local_rsync_version(tmp_path, monkeypatch, version_line, ok):
    fake = tmp_path / "rsync"
    fake.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (rsync,) = [doctor.Check(*r) for r in tools.local_tools() if r[0] == "rsync"]
    assert rsync.status == (doctor.OK if ok else doctor.FAIL), rsync
    assert "brew install rsync" in rsync.fix or (ok and rsync.fix == "")


def test_launch_preflight_stops_before_anything_is_made(home, ec2_client, dlami, capsys):
    with pytest.raises(Exit) as stopped:
        lifecycle.launch(Context(), name="exp1", set_=[*SETS, "s3_access=[s3://bci-missing/data]"])
    assert stopped.value.code == 1
    captured = capsys.readouterr()
    assert "bucket bci-missing does not exist" in captured.out
    assert captured.err.startswith("error: preflight: 1 check(s) failed (S3 bucket)")
    spotruns = ec2_client.describe_instances(Filters=[{"Name": "tag-key", "Values": ["spotrun:name"]}])
    assert spotruns["Reservations"] == []
    assert ec2_client.describe_key_pairs()["KeyPairs"] == []
    assert boto3.client("iam", region_name="us-east-1").list_roles()["Roles"] == []
    assert not paths.key_file("spotrun").exists()


def test_preflight_lets_a_bad_region_speak_for_itself(home, aws_env):
    with pytest.raises(ToolkitError, match="unknown AWS region"):
        doctor.preflight(load_aws_config(None, ["region=us-east-9"]), "x", [])


def test_make_targets_and_fab_list():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def make_n(*args):
        got = subprocess.run(
            ["make", "-s", "-n", *args], cwd=repo, capture_output=True, text=True, check=True
        )
        return got.stdout.strip().splitlines()

    assert make_n("aws-doctor", "NAME=exp1", "CONFIG=my.yaml", "ARGS=dataset.dataset_dir=s3://b/d") == [
        ".venv/bin/fab doctor --name exp1 --config my.yaml --train-config configs/demo.yaml "
        '--args "dataset.dataset_dir=s3://b/d"'
    ]
    assert make_n("aws-prices", "HOURS=5") == [".venv/bin/fab prices --config configs/aws.yaml --hours 5"]
    listing = subprocess.run([".venv/bin/fab", "--list"], cwd=repo, capture_output=True, text=True).stdout
    assert "\n  doctor " in listing and "\n  prices " in listing


@pytest.mark.parametrize(
    ("instance_type", "spot", "on_demand"),
    [
        ("p5.48xlarge", "L-C4BD4855", "L-417A185B"),
        ("p5en.48xlarge", "L-C4BD4855", "L-417A185B"),
        ("p4d.24xlarge", "L-7212CCBC", "L-417A185B"),
        ("p3.2xlarge", "L-7212CCBC", "L-417A185B"),
        ("p2.xlarge", "L-7212CCBC", "L-417A185B"),
        ("g6.xlarge", "L-3819A6DF", "L-DB2E81BA"),
        ("vt1.3xlarge", "L-3819A6DF", "L-DB2E81BA"),
        ("inf2.xlarge", "L-B5D1601B", "L-1945791B"),
        ("trn1.2xlarge", "L-6B0D517C", "L-2C3B7624"),
        ("dl1.24xlarge", "L-85EED4F7", "L-6E869C2A"),
        ("x2iedn.xlarge", "L-E3A00192", "L-7295265B"),
        ("f1.2xlarge", "L-88CF9481", "L-74FC7D96"),
        ("i4i.large", "L-34B43A08", "L-1216C47A"),
        ("d3.xlarge", "L-34B43A08", "L-1216C47A"),
        ("t3.micro", "L-34B43A08", "L-1216C47A"),
    ],
)
def test_each_family_has_its_documented_quota(instance_type, spot, on_demand):
    """The EC2 user guide's "Spot Instance quotas" table: one spot quota per family group, P5 apart
    from P4/P3/P2; on-demand, every P type shares "Running On-Demand P instances". Prefixes are
    matched longest first (inf before i, dl before d, trn before t)."""
    from ec2.cloud import quota

    assert quota.quota_for(instance_type, quota.SPOT).code == spot
    assert quota.quota_for(instance_type, quota.ON_DEMAND).code == on_demand


def _simulator(decisions: dict[str, str]):
    """IAM's documented SimulatePrincipalPolicy answer (moto has none): iam:CreateServiceLinkedRole
    evaluated to ``decisions[service]`` ("allowed" / "implicitDeny") for the service named in the
    request's iam:AWSServiceName context key."""
    from urllib.parse import parse_qs

    def simulate(request):
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        service = parse_qs(body).get("ContextEntries.member.1.ContextKeyValues.member.1", [None])[0]
        if service is None:
            return None  # another simulation (the instance profile row's): moto's answer
        xml = (
            '<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            "<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults><member>"
            f"<EvalDecision>{decisions[service]}</EvalDecision>"
            "<EvalActionName>iam:CreateServiceLinkedRole</EvalActionName><EvalResourceName>*</EvalResourceName>"
            "<MatchedStatements/><MissingContextValues/></member></EvaluationResults>"
            "</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>injected</RequestId>"
            "</ResponseMetadata></SimulatePrincipalPolicyResponse>"
        )
        return 200, xml.encode()

    return answer(aws.client("iam", "us-east-1", None, attempts=1), "SimulatePrincipalPolicy", simulate)


def _default_ebs_key(key_id: str):
    """EC2's documented GetEbsDefaultKmsKeyId answer (moto does not implement it)."""
    xml = (
        '<GetEbsDefaultKmsKeyIdResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>injected</requestId><kmsKeyId>{key_id}</kmsKeyId></GetEbsDefaultKmsKeyIdResponse>"
    )
    ec2 = aws.client("ec2", "us-east-1", None, attempts=1)
    return answer(ec2, "GetEbsDefaultKmsKeyId", lambda request: (200, xml.encode()))


def _lines(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if f"  {name}  " in f"  {line}  " or name in line]


def test_service_linked_roles_present_or_creatable(home, ec2_client, dlami, capsys):
    """A fresh account has neither AWSServiceRoleForEC2Spot nor AWSServiceRoleForAutoScaling: the
    first spot launch and the first group make them, if the caller may (else AuthFailure.
    ServiceLinkedRoleCreationNotPermitted)."""
    _simulator({"spot.amazonaws.com": "implicitDeny", "autoscaling.amazonaws.com": "allowed"})
    code, out = _doctor(capsys)
    assert code == 1 and _rows(out)["service-linked role"] == ["✗", "✓"]
    assert (
        "AWSServiceRoleForEC2Spot does not exist yet; AWS makes it at the first spot launch, and you "
        "may not iam:CreateServiceLinkedRole: it would fail with "
        "AuthFailure.ServiceLinkedRoleCreationNotPermitted"
    ) in out
    assert (
        "fix: an admin runs once: aws iam create-service-linked-role --aws-service-name spot.amazonaws.com"
        in out
    )
    assert (
        "AWSServiceRoleForAutoScaling does not exist yet" in out
        and "(you may: iam:CreateServiceLinkedRole)" in out
    )

    # Once an admin made it, it is there (read back from moto's IAM); on-demand needs no spot role.
    # (moto's CreateServiceLinkedRole names it AWSServiceRoleForSpot, so it is made as AWS names it.)
    boto3.client("iam").create_role(
        RoleName="AWSServiceRoleForEC2Spot",
        Path="/aws-service-role/spot.amazonaws.com/",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "spot.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    code, out = _doctor(capsys)
    assert _rows(out)["service-linked role"] == ["✓", "✓"] and "AWSServiceRoleForEC2Spot exists" in out
    code, out = _doctor(capsys, "market=on-demand")
    assert _rows(out)["service-linked role"] == ["✓"] and "AWSServiceRoleForEC2Spot" not in out


def test_default_ebs_key_aws_managed_or_granted_to_auto_scaling(home, ec2_client, dlami, capsys):
    kms = boto3.client("kms", region_name="us-east-1")
    _simulator({"spot.amazonaws.com": "allowed", "autoscaling.amazonaws.com": "allowed"})
    # AWS managed (aws/ebs): fine. moto describes its aws/ebs alias as customer managed, so KMS's
    # documented DescribeKey answer for an AWS managed key is injected.
    _default_ebs_key("alias/aws/ebs")
    described = answer(
        aws.client("kms", "us-east-1", None, attempts=1),
        "DescribeKey",
        lambda request: (
            json_answer(
                {
                    "KeyMetadata": {
                        "AWSAccountId": "123456789012",
                        "KeyId": "0d9e6a2b-0000-4000-8000-000000000001",
                        "Arn": "arn:aws:kms:us-east-1:123456789012:key/0d9e6a2b-0000-4000-8000-000000000001",
                        "KeyManager": "AWS",
                        "KeyState": "Enabled",
                        "Enabled": True,
                        "Description": "Default key that protects my EBS volumes",
                    }
                }
            )
            if json.loads(request.body)["KeyId"] == "alias/aws/ebs"
            else None
        ),
    )
    code, out = _doctor(capsys)
    assert _rows(out)["default EBS key"] == ["✓"] and "alias/aws/ebs (AWS managed)" in out and described

    # A customer managed key (moto's KMS) without a grant for Auto Scaling's role: ✗ with the grant.
    key = kms.create_key(Description="team key")["KeyMetadata"]
    aws.reset_clients()
    _simulator({"spot.amazonaws.com": "allowed", "autoscaling.amazonaws.com": "allowed"})
    _default_ebs_key(key["Arn"])
    code, out = _doctor(capsys)
    role = accountsetup.role_arn("aws", "123456789012", *accountsetup.AUTOSCALING_ROLE[:2])
    assert code == 1 and _rows(out)["default EBS key"] == ["✗"]
    assert "the Auto Scaling service-linked role may not use it" in out
    assert (
        f"fix: aws kms create-grant --key-id {key['Arn']} --grantee-principal {role} --operations Encrypt"
        in out
    )
    kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=role, Operations=list(accountsetup.KEY_OPERATIONS))
    code, out = _doctor(capsys)
    assert _rows(out)["default EBS key"] == ["✓"] and "usable by Auto Scaling (a grant)" in out


def test_account_rows_are_unknown_where_the_peer_cannot_answer(home, ec2_client, dlami, capsys):
    # moto: no SimulatePrincipalPolicy, no GetEbsDefaultKmsKeyId. Shown, not failed.
    code, out = _doctor(capsys)
    rows = _rows(out)
    assert rows["service-linked role"] == ["unknown", "unknown"] and rows["default EBS key"] == ["unknown"]
    assert "cannot read the default EBS key" in out
