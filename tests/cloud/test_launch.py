"""Launch against moto's server: every instance setting read back from describe_instances, the
fallback order across types and zones, quota stops, and no instance left after a failed launch."""

from __future__ import annotations

import base64
import stat

import boto3
import pytest

from ec2 import registry
from ec2.cloud import instances
from ec2.cloud.launch import launch
from ec2.errors import AwsError, CapacityError, ConfigError, ConnectionLost, QuotaError, ToolkitError
from ec2.remote import sshconfig
from tests.peers.moto_ec2 import config


def _only_instance(ec2, states=("pending", "running")):
    found = [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["spotrun:name"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
        if i["State"]["Name"] in states
    ]
    assert len(found) == 1, found
    return found[0]


def test_happy_path_sets_everything(home, ec2_client, dlami, aws_gate, capsys):
    iam = boto3.client("iam", region_name="us-east-1")
    profile_arn = iam.create_instance_profile(InstanceProfileName="spotrun-s3")["InstanceProfile"]["Arn"]
    aws_gate.lag.settle()  # the user's profile was made long before this launch
    cfg = config(
        "instance_types=[g5.xlarge]",
        "zones=[us-east-1b]",
        "root_volume_gb=123",
        "max_hours=2",
        "idle_minutes=15",
        "iam_instance_profile=spotrun-s3",
        "tags={team: bci}",
    )
    record = launch(cfg, "exp1", wait_ssh=False)
    out = capsys.readouterr().out
    assert f"AMI: {dlami}" in out and "auto: PyTorch 2.7 on Ubuntu 22.04" in out and "describe_images" in out
    assert "[1/1] trying g5.xlarge in us-east-1b (spot" in out

    raw = _only_instance(ec2_client)
    assert raw["InstanceId"] == record.instance_id and raw["State"]["Name"] == "running"
    assert raw["ImageId"] == dlami
    assert raw["InstanceType"] == "g5.xlarge" and raw["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert raw["InstanceLifecycle"] == "spot"
    assert raw["MetadataOptions"]["HttpTokens"] == "required"
    assert raw["KeyName"] == "spotrun"
    assert raw["IamInstanceProfile"]["Arn"] == profile_arn
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags["Name"] == tags["spotrun:name"] == "exp1"
    assert tags["spotrun:owner"].startswith("arn:aws:") and tags["spotrun:created"].endswith("Z")
    assert tags["team"] == "bci"

    group_id = raw["SecurityGroups"][0]["GroupId"]
    group = ec2_client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert group["GroupName"] == "spotrun-ssh"
    ranges = [(p["FromPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p["IpRanges"]]
    assert ranges == [(22, "203.0.113.7/32")]

    iid = record.instance_id
    behaviour = ec2_client.describe_instance_attribute(
        InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    user_data = ec2_client.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"][
        "Value"
    ]
    script = base64.b64decode(user_data).decode()
    assert "shutdown -h +120 " in script and "\nIDLE_MINUTES=15\n" in script

    volumes = ec2_client.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])[
        "Volumes"
    ]
    assert [(v["Size"], v["VolumeType"], v["Encrypted"]) for v in volumes] == [(123, "gp3", True)]
    assert {t["Key"]: t["Value"] for t in volumes[0]["Tags"]}["spotrun:name"] == "exp1"

    key = home / ".ssh" / "spotrun.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o400 and "PRIVATE KEY" in key.read_text()
    assert registry.get("exp1") == record
    assert record.host == raw["PublicIpAddress"] and record.key_path == str(key)
    assert f"HostName {record.host}" in sshconfig.entries()["spotrun-exp1"]

    # A second launch under the same name is refused while the first lives.
    with pytest.raises(ToolkitError, match="already exists.*fab terminate --name exp1"):
        launch(cfg, "exp1", wait_ssh=False)


def test_fallback_order_across_types_and_zones(home, ec2_client, dlami, refusing, capsys):
    wrapper = refusing(
        lambda a: None if a[:2] == ("g4dn.xlarge", "us-east-1b") else "InsufficientInstanceCapacity"
    )
    cfg = config("instance_types=[g5.xlarge, g4dn.xlarge]", "zones=[us-east-1a, us-east-1b]")
    record = launch(cfg, "exp1", wait_ssh=False)
    # moto's spot prices are flat, so the configured type order breaks the tie, then the zone name.
    assert wrapper.attempts == [
        ("g5.xlarge", "us-east-1a", "spot"),
        ("g5.xlarge", "us-east-1b", "spot"),
        ("g4dn.xlarge", "us-east-1a", "spot"),
        ("g4dn.xlarge", "us-east-1b", "spot"),
    ]
    assert (record.instance_type, record.zone, record.market) == ("g4dn.xlarge", "us-east-1b", "spot")
    out = capsys.readouterr().out
    assert out.count("InsufficientInstanceCapacity: no capacity there; next choice") == 3


def test_exclude_skips_the_interrupted_pair(home, ec2_client, dlami, refusing):
    wrapper = refusing(lambda a: None)
    cfg = config("instance_types=[g5.xlarge]", "zones=[us-east-1a, us-east-1b]")
    launch(cfg, "exp1", wait_ssh=False, exclude={("g5.xlarge", "us-east-1a")})
    assert wrapper.attempts == [("g5.xlarge", "us-east-1b", "spot")]


def test_quota_error_stops_at_once(home, ec2_client, dlami, refusing):
    wrapper = refusing(lambda a: "VcpuLimitExceeded")
    with pytest.raises(QuotaError, match=r"Service Quotas.*\[VcpuLimitExceeded\]"):
        launch(config("zones=[us-east-1a, us-east-1b]"), "exp1", wait_ssh=False)
    assert len(wrapper.attempts) == 1
    assert instances.find_instances(ec2_client) == []


@pytest.mark.parametrize(
    ("instance_type", "code", "quota"),
    [
        ("p5.48xlarge", "MaxSpotInstanceCountExceeded", "All P5 Spot Instance Requests', L-C4BD4855"),
        ("p4d.24xlarge", "VcpuLimitExceeded", "All P4, P3 and P2 Spot Instance Requests', L-7212CCBC"),
        ("g5.xlarge", "VcpuLimitExceeded", "All G and VT Spot Instance Requests', L-3819A6DF"),
    ],
)
def test_quota_error_names_the_refused_familys_quota(
    home, ec2_client, dlami, refusing, instance_type, code, quota
):
    refusing(lambda a: code)
    with pytest.raises(QuotaError) as e:
        launch(config(f"instance_types=[{instance_type}]", "zones=[us-east-1a]"), "exp1", wait_ssh=False)
    assert quota in str(e.value)
    assert instance_type.startswith("g") or "G and VT" not in str(e.value)


def test_spot_then_on_demand_falls_back(home, ec2_client, dlami, refusing):
    wrapper = refusing(lambda a: "MaxSpotInstanceCountExceeded" if a[2] == "spot" else None)
    cfg = config("instance_types=[g5.xlarge]", "zones=[us-east-1a]", "market=spot-then-on-demand")
    record = launch(cfg, "exp1", wait_ssh=False)
    assert wrapper.attempts == [("g5.xlarge", "us-east-1a", "spot"), ("g5.xlarge", "us-east-1a", "on-demand")]
    assert record.market == "on-demand" and "InstanceLifecycle" not in _only_instance(ec2_client)


def test_no_capacity_anywhere(home, ec2_client, dlami, refusing):
    wrapper = refusing(lambda a: "Unsupported" if a[1] == "us-east-1a" else "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError, match=r"after 2 attempt\(s\).*spot-then-on-demand"):
        launch(config("instance_types=[g5.xlarge]", "zones=[us-east-1a, us-east-1b]"), "exp1", wait_ssh=False)
    assert len(wrapper.attempts) == 2 and instances.find_instances(ec2_client) == []


def test_failure_after_instance_exists_terminates_it(home, ec2_client, dlami, capsys):
    # A proxy that answers nothing: SSH never becomes ready within the short deadline.
    cfg = config("ssh_proxy_command='true %h %p'", "ssh_ready_timeout_s=1")
    with pytest.raises(ConnectionLost, match="no SSH banner"):
        launch(cfg, "exp1")
    out = capsys.readouterr().out
    assert "terminating it so nothing is left billing" in out and "terminated i-" in out
    assert instances.find_instances(ec2_client) == []
    assert registry.load_all() == {} and sshconfig.entries() == {}


def test_a_name_registered_elsewhere_is_not_replaced(home, ec2_client, dlami):
    # An adopted machine's record, and a launched instance's record in another region (which
    # refuse_duplicate, asking this region, cannot see): a launch would replace their SSH entries.
    from common.guard import WouldLose

    registry.put(registry.MachineRecord(name="lab", host="192.0.2.7", port=2222, key_path="/k"))
    registry.put(
        registry.MachineRecord(name="exp1", host="203.0.113.9", instance_id="i-0abc", region="eu-west-1")
    )
    for name in ("lab", "exp1"):
        sshconfig.write_entry(registry.get(name))
    before = (registry.load_all(), sshconfig.entries())
    with pytest.raises(
        WouldLose, match=r"launching 'lab' would replace adopted machine ubuntu@192.0.2.7:2222"
    ):
        launch(config("instance_types=[g5.xlarge]"), "lab", wait_ssh=False)
    with pytest.raises(
        WouldLose,
        match=r"launching 'exp1' would replace the record and SSH entry of i-0abc in eu-west-1; .*"
        r"`fab terminate --name exp1 --set region=eu-west-1`",
    ):
        launch(config("instance_types=[g5.xlarge]"), "exp1", wait_ssh=False)
    assert (registry.load_all(), sshconfig.entries()) == before
    assert instances.find_instances(ec2_client) == []
    # A record of this region whose instance is gone is stale: the launch replaces it.
    registry.put(
        registry.MachineRecord(name="exp1", host="203.0.113.9", instance_id="i-0abc", region="us-east-1")
    )
    assert launch(config("instance_types=[g5.xlarge]"), "exp1", wait_ssh=False).instance_id != "i-0abc"


def test_keep_on_failure_keeps_the_instance(home, ec2_client, dlami, capsys):
    cfg = config("ssh_proxy_command='true'", "ssh_ready_timeout_s=0.5")
    with pytest.raises(ConnectionLost):
        launch(cfg, "exp1", keep_on_failure=True)
    assert "kept as asked" in capsys.readouterr().out
    assert [i.state for i in instances.find_instances(ec2_client, "exp1")] == ["running"]
    assert "exp1" in registry.load_all()


def test_unsupported_type_unknown_region_and_bad_name(home, ec2_client, dlami):
    with pytest.raises(AwsError, match=r"none of g9z.xlarge is offered.*\[Unsupported\]"):
        launch(config("instance_types=[g9z.xlarge]"), "exp1", wait_ssh=False)
    with pytest.raises(ConfigError, match="unknown AWS region 'us-east-9'"):
        launch(config("region=us-east-9"), "exp1")
    with pytest.raises(ConfigError, match="not a usable instance name"):
        launch(config(), "bad name")


def test_missing_credentials_fail_before_anything_exists(home, ec2_client, dlami, monkeypatch):
    from common import aws

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws.reset_clients()
    with pytest.raises(AwsError, match=r"no AWS credentials found; run `aws configure`.*\[NoCredentials\]"):
        launch(config(), "exp1")
    assert not (home / ".ssh" / "spotrun.pem").exists()


def test_ssh_port_is_the_one_opened_and_watched(home, ec2_client, dlami):
    record = launch(config("ssh_port=2222", "instance_types=[g5.xlarge]"), "exp1", wait_ssh=False)
    raw = _only_instance(ec2_client)
    group = ec2_client.describe_security_groups(GroupIds=[raw["SecurityGroups"][0]["GroupId"]])
    ranges = [
        (p["FromPort"], p["ToPort"], r["CidrIp"])
        for p in group["SecurityGroups"][0]["IpPermissions"]
        for r in p["IpRanges"]
    ]
    assert ranges == [(2222, 2222, "203.0.113.7/32")] and record.port == 2222
    script = base64.b64decode(
        ec2_client.describe_instance_attribute(InstanceId=raw["InstanceId"], Attribute="userData")[
            "UserData"
        ]["Value"]
    ).decode()
    # sshd is moved to the port, and the idle watch counts sessions on it (not on 22).
    assert "echo 'Port 2222' > /etc/ssh/sshd_config.d/" in script
    assert "\nSSH_PORT=2222\n" in script and "sport = :$SSH_PORT" in script


def test_unoffered_type_creates_nothing(home, ec2_client, dlami):
    with pytest.raises(AwsError, match=r"none of p99.huge is offered.*\[Unsupported\]"):
        launch(config("instance_types=[p99.huge]"), "exp1", wait_ssh=False)
    assert ec2_client.describe_key_pairs()["KeyPairs"] == []
    assert [g["GroupName"] for g in ec2_client.describe_security_groups()["SecurityGroups"]] == ["default"]


def test_an_instance_found_by_its_tag_does_not_replace_an_adopted_machines_entries(home):
    # `fab watch` and a picked-up `fab run` register the instance they find under the run's name.
    from ec2.cloud.launch import register_found

    lab = registry.MachineRecord(name="job", host="192.0.2.7", key_path="/k")
    registry.put(lab)
    sshconfig.write_entry(lab)
    found = registry.MachineRecord(name="job", host="198.51.100.3", instance_id="i-0new", region="us-east-1")
    entries = sshconfig.entries()
    assert register_found(found) is False
    assert registry.get("job") == lab and sshconfig.entries() == entries
    # A launched instance's old record (the run's previous instance) is replaced.
    registry.put(
        registry.MachineRecord(name="job", host="198.51.100.2", instance_id="i-0old", region="us-east-1")
    )
    assert register_found(found) is True and registry.get("job") == found
    assert "HostName 198.51.100.3" in sshconfig.entries()["spotrun-job"]
