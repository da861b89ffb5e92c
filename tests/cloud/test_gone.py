"""instances.gone_check: what a task asks AWS after a dropped SSH connection (moto's server)."""

from __future__ import annotations

import boto3
import botocore.config
import pytest

from common import aws
from ec2 import registry
from ec2.cloud import instances
from ec2.errors import InstanceGone
from ec2.remote import sshconfig


def _record(ec2_client, name: str) -> registry.MachineRecord:
    image = "ami-03cf127a"  # one of moto's stock images, by id
    iid = ec2_client.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    record = registry.MachineRecord(name=name, host="192.0.2.7", instance_id=iid, region="us-east-1")
    registry.put(record)
    sshconfig.write_entry(record)
    return record


def test_running_instance_is_retried_and_an_ended_one_is_one_line(home, ec2_client):
    record = _record(ec2_client, "exp1")
    check = instances.gone_check(record)
    check()  # running: nothing to say, the caller retries SSH
    assert "exp1" in registry.load_all()
    ec2_client.terminate_instances(InstanceIds=[record.instance_id])
    with pytest.raises(
        InstanceGone, match=r"^exp1 \(i-[0-9a-f]+\) is (shutting-down|terminated): AWS ended it"
    ):
        check()
    assert "exp1" not in registry.load_all() and "spotrun-exp1" not in sshconfig.entries()


def test_unknown_to_aws_is_gone_and_offline_aws_is_no_answer(home, ec2_client, monkeypatch):
    record = registry.MachineRecord(
        name="old", host="192.0.2.7", instance_id="i-0123456789abcdef0", region="us-east-1"
    )
    registry.put(record)
    with pytest.raises(InstanceGone, match="is gone"):
        instances.gone_check(record)()
    # The laptop offline: AWS cannot be asked either, so nothing is concluded (SSH retries go on).
    kept = _record(ec2_client, "exp2")
    # (a real client at a closed port; one attempt, where spotrun's client would back off ~15 s)
    offline = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    monkeypatch.setattr(aws, "client", lambda *args, **kwargs: offline)
    instances.gone_check(kept)()
    assert "exp2" in registry.load_all()
    # An adopted machine is never asked about.
    instances.gone_check(registry.MachineRecord(name="lab", host="192.0.2.8"))()
