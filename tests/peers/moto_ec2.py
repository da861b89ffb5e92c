"""Fixtures for the lifecycle tests: moto's server (aws_env), a temporary HOME, a DLAMI-named image,
a loopback checkip service, and a client wrapper that injects capacity/quota refusals."""

from __future__ import annotations

import http.server
import shutil
import tempfile
import threading
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from common import aws
from ec2.cloud import propagation
from ec2.config import load_aws_config

DLAMI_NAME = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 20250601"
CALLER_IP = "198.51.100.23"


def make_image(ec2, name: str) -> str:
    """An image with `name`, owned by the test account (moto's register_image drops the
    architecture; create_image from an x86_64 instance keeps it)."""
    base = ec2.describe_images(
        Owners=["amazon"],
        Filters=[{"Name": "architecture", "Values": ["x86_64"]}, {"Name": "name", "Values": ["ubuntu*"]}],
    )["Images"][0]
    iid = ec2.run_instances(ImageId=base["ImageId"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=iid, Name=name)["ImageId"]
    ec2.terminate_instances(InstanceIds=[iid])
    return image_id


@pytest.fixture
def home(monkeypatch):
    """HOME and SPOTRUN_HOME in a short temporary folder (control socket paths stay short)."""
    root = Path(tempfile.mkdtemp(prefix="sre", dir="/tmp"))
    (root / "home").mkdir()
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("SPOTRUN_HOME", str(root / "s"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ec2_client(aws_env):
    aws.reset_clients()
    yield boto3.client("ec2", region_name="us-east-1")
    aws.reset_clients()


@pytest.fixture
def dlami(ec2_client):
    return make_image(ec2_client, DLAMI_NAME)


def config(*overrides: str):
    """The launch config tests use: a fixed caller CIDR, the test account's DLAMI copy."""
    return load_aws_config(None, ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]", *overrides])


@pytest.fixture
def checkip(monkeypatch):
    """A loopback stand-in for checkip.amazonaws.com answering CALLER_IP."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = f"{CALLER_IP}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SPOTRUN_CHECKIP_URL", f"http://127.0.0.1:{server.server_port}/")
    yield CALLER_IP
    server.shutdown()
    server.server_close()


class RefusingEc2:
    """The real (moto) EC2 client, except that run_instances records each attempt as
    (type, zone, market) and raises ClientError with the AWS code `refuse(attempt)` returns. A
    request refused because the new instance profile has not propagated yet (the gate's IAM lag) is
    not an attempt of its own: the same choice is sent again."""

    def __init__(self, real, refuse):
        self._real = real
        self._refuse = refuse
        self.attempts: list[tuple[str, str, str]] = []

    def run_instances(self, **params):
        market = params.get("InstanceMarketOptions", {}).get("MarketType", "on-demand")
        attempt = (params["InstanceType"], params["Placement"]["AvailabilityZone"], market)
        self.attempts.append(attempt)
        code = self._refuse(attempt)
        if code:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": code, "Message": f"injected {code}"}}, "RunInstances"
            )
        try:
            return self._real.run_instances(**params)
        except botocore.exceptions.ClientError as e:
            if propagation.profile_not_visible(e):
                self.attempts.pop()
            raise

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def refusing(monkeypatch):
    """Install a RefusingEc2 behind common.aws.client("ec2", ...) (us-east-1): refusing(rule) → it."""

    def install(rule) -> RefusingEc2:
        real_client = aws.client
        wrapper = RefusingEc2(real_client("ec2", "us-east-1", None), rule)

        def client(service, region=None, profile=None, **kwargs):
            return wrapper if service == "ec2" else real_client(service, region, profile, **kwargs)

        monkeypatch.setattr(aws, "client", client)
        return wrapper

    return install
