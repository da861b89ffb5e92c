"""ec2/remote/giveup.py, the standard-library give-up a detached boot runs before boto3 exists (the
whole user data runs in tests/cloud/test_userdata_detached.py): its SigV4 signature is botocore's,
to the byte, and it takes the instance role's credentials from the metadata service when no AWS_*
variables are set, as an instance has none."""

from __future__ import annotations

from datetime import datetime, timezone

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ec2.remote import giveup

KEYS = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
BODY = b"Action=SetDesiredCapacity&Version=2011-01-01&AutoScalingGroupName=spotrun-job&DesiredCapacity=0"


@pytest.mark.parametrize("token", [None, "session-token"])
def test_the_signature_is_botocores(token):
    url = "https://autoscaling.eu-west-1.amazonaws.com/"
    request = AWSRequest(
        method="POST",
        url=url,
        data=BODY,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        "autoscaling",
        "eu-west-1",
    ).add_auth(request)
    when = datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    ours = giveup.signed_headers(url, BODY, "eu-west-1", (*KEYS, token), when)
    assert ours["authorization"] == request.headers["Authorization"]


def test_role_credentials_come_from_the_metadata_service(aws_env, imds, monkeypatch):
    monkeypatch.setenv("SPOTRUN_IMDS_URL", imds.url)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert giveup.credentials() == ("ASIAIMDSROLEKEY00001", "imds-role-secret", "imds-role-session-token")

    asg = boto3.client("autoscaling", aws_access_key_id="testing", aws_secret_access_key="testing")
    boto3.client("ec2", aws_access_key_id="t", aws_secret_access_key="t").create_launch_template(
        LaunchTemplateName="spotrun-job", LaunchTemplateData={"ImageId": "ami-12345678"}
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName="spotrun-job",
        LaunchTemplate={"LaunchTemplateName": "spotrun-job", "Version": "$Latest"},
        MinSize=0,
        MaxSize=1,
        DesiredCapacity=1,
        AvailabilityZones=["us-east-1a"],
    )
    assert giveup.give_up("spotrun-job", "us-east-1", "the bundle is gone\nsecond line") == []
    [group] = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["spotrun-job"])["AutoScalingGroups"]
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert group["DesiredCapacity"] == 0
    assert tags[giveup.GIVEUP_TAG].endswith(f"{imds.instance_id}: the bundle is gone | second line")


DENIED = (
    '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type>'
    "<Code>AccessDenied</Code><Message>User: arn:aws:sts::123456789012:assumed-role/r/i-0123 is not "
    "authorized to perform: autoscaling:SetDesiredCapacity</Message></Error>"
    "<RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ErrorResponse>"
)


def test_a_refused_call_says_what_aws_said(aws_env, monkeypatch):
    """A role without the grant: Auto Scaling's documented error document (injected by a loopback
    endpoint; moto grants everything) comes back as one line per call, code and message."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = DENIED.encode()
            self.send_response(403)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_AUTO_SCALING", f"http://127.0.0.1:{server.server_port}")
        failed = giveup.give_up("spotrun-job", "us-east-1", "why")
    finally:
        server.shutdown()
        server.server_close()
    assert [f.split(":")[0] for f in failed] == ["SetDesiredCapacity refused", "CreateOrUpdateTags refused"]
    assert (
        "AccessDenied: User: arn:aws:sts::123456789012:assumed-role/r/i-0123 is not authorized" in failed[0]
    )
    assert len(giveup.tag_value("x" * 400, "i-1", datetime(2026, 1, 1, tzinfo=timezone.utc))) == 256


def test_the_requests_are_what_botocore_serializes(monkeypatch):
    """Each call's parameters, as botocore's query serializer writes the same request from the
    Auto Scaling service model (Tags.member.N.*, booleans as "false")."""
    from botocore.serialize import create_serializer
    from botocore.session import get_session

    model = get_session().get_service_model("autoscaling")
    sent = []
    monkeypatch.setattr(giveup, "call", lambda region, action, params: sent.append((action, params)))
    monkeypatch.setattr(giveup, "instance_id", lambda: "i-0123456789abcdef0")
    assert giveup.give_up("spotrun-job", "us-east-1", "S3 refused") == []
    [(_, desired), (_, tags)] = sent
    value = tags["Tags.member.1.Value"]
    assert value.endswith("i-0123456789abcdef0: S3 refused")
    expected = {
        "SetDesiredCapacity": {
            "AutoScalingGroupName": "spotrun-job",
            "DesiredCapacity": 0,
            "HonorCooldown": False,
        },
        "CreateOrUpdateTags": {
            "Tags": [
                {
                    "ResourceId": "spotrun-job",
                    "ResourceType": "auto-scaling-group",
                    "Key": giveup.GIVEUP_TAG,
                    "Value": value,
                    "PropagateAtLaunch": False,
                }
            ]
        },
    }
    for (action, params), ours in zip(expected.items(), (desired, tags), strict=True):
        body = create_serializer("query").serialize_to_request(params, model.operation_model(action))["body"]
        # urlencode writes both as text; botocore keeps an integer until then.
        assert {"Action": action, "Version": giveup.API_VERSION, **ours} == {
            k: str(v) for k, v in body.items()
        }
