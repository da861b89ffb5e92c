"""`ami_flavour: auto`: the highest PyTorch (compared as numbers) on the newest Ubuntu LTS, from the
public DLAMI parameters or from describe_images; and the warning for a stale pinned flavour.

moto has no parameters under /aws/service/deeplearning (and refuses put_parameter under /aws/), so
the SSM listing is AWS's documented GetParametersByPath response, injected at the botocore level in
two pages; the image ids it names are real images on moto, which describe_images then reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from common import aws
from ec2.cloud.ami import choose, parse_flavour, resolve_ami, stale_warning
from tests.peers.inject import answer, json_answer
from tests.peers.moto_ec2 import config, make_image

ROOT = "/aws/service/deeplearning/ami/x86_64"


def _parameter(flavour: str, value: str, tail: str = "latest/ami-id") -> dict:
    name = f"{ROOT}/{flavour}/{tail}"
    return {
        "Name": name,
        "Type": "String",
        "Value": value,
        "Version": 3,
        "LastModifiedDate": 1767225600.0,
        "ARN": f"arn:aws:ssm:us-east-1::parameter{name}",
        "DataType": "aws:ec2:image",
    }


def test_version_order_is_numeric_and_the_newest_lts_wins():
    names = [
        "oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04",
        "oss-nvidia-driver-gpu-pytorch-2.10-ubuntu-24.04",
        "oss-nvidia-driver-gpu-pytorch-2.12-ubuntu-22.04",  # newer PyTorch, older Ubuntu
        "oss-nvidia-driver-gpu-pytorch-2.13-ubuntu-25.10",  # not an LTS
    ]
    flavours = [parse_flavour(n) for n in names]
    assert choose(flavours).name == "oss-nvidia-driver-gpu-pytorch-2.10-ubuntu-24.04"
    assert parse_flavour("base-oss-nvidia-driver-gpu-ubuntu-24.04") is None
    assert parse_flavour("pytorch-2.9-neuron-ubuntu-24.04") is None
    assert choose([]) is None


def test_auto_reads_every_page_of_the_public_parameters(ec2_client, capsys):
    dlami = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch {} (Ubuntu {}) 20260101"
    old = make_image(ec2_client, dlami.format("2.9", "24.04"))
    new = make_image(ec2_client, dlami.format("2.10", "24.04"))
    other = make_image(ec2_client, dlami.format("2.12", "22.04"))
    pages = [
        {
            "Parameters": [
                _parameter("base-oss-nvidia-driver-gpu-ubuntu-24.04", other),
                _parameter("oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04", old),
                _parameter("oss-nvidia-driver-gpu-pytorch-2.12-ubuntu-22.04", other),
            ],
            "NextToken": "page-2",
        },
        {
            "Parameters": [
                _parameter("oss-nvidia-driver-gpu-pytorch-2.10-ubuntu-24.04", new),
                _parameter("oss-nvidia-driver-gpu-pytorch-2.10-ubuntu-24.04", old, "2025-12-01/ami-id"),
                _parameter("pytorch-2.10-neuron-ubuntu-24.04", other),
            ]
        },
    ]
    ssm = aws.client("ssm", "us-east-1")
    bodies = []

    def listing(request):
        asked = json.loads(request.body)
        bodies.append(asked)
        return json_answer(pages[1] if asked.get("NextToken") == "page-2" else pages[0])

    answer(ssm, "GetParametersByPath", listing)
    ami = resolve_ami(config(), ec2_client, ssm)
    assert ami.image_id == new and ami.warning is None
    assert ami.reason.startswith("auto: PyTorch 2.10 on Ubuntu 24.04, the highest PyTorch on the newest")
    assert "of 3 OSS-driver PyTorch DLAMI flavours, from SSM " + ROOT in ami.reason
    assert [b["Path"] for b in bodies] == [ROOT, ROOT] and all(b["Recursive"] for b in bodies)


def test_auto_fallback_to_describe_images_follows_the_same_rule(ec2_client):
    dlami = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch {} (Ubuntu {}) {}"
    make_image(ec2_client, dlami.format("2.9", "24.04", "20260301"))
    wanted = make_image(ec2_client, dlami.format("2.10", "24.04", "20260101"))
    make_image(ec2_client, dlami.format("2.12", "22.04", "20260301"))
    make_image(ec2_client, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20260401")
    # moto's SSM lists nothing under /aws/service/deeplearning: the fallback answers.
    ami = resolve_ami(config(), ec2_client, aws.client("ssm", "us-east-1"))
    assert ami.image_id == wanted
    assert (
        ami.reason.startswith("auto: PyTorch 2.10 on Ubuntu 24.04") and "from describe_images" in ami.reason
    )


def test_a_stale_pinned_flavour_is_warned_about(ec2_client):
    flavour = "oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04"
    image = make_image(ec2_client, "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 2025")
    built = ec2_client.describe_images(ImageIds=[image])["Images"][0]["CreationDate"]
    when = datetime.fromisoformat(built.replace("Z", "+00:00"))
    pinned = config(f"ami_flavour={flavour}")
    fresh = resolve_ami(pinned, ec2_client, aws.client("ssm", "us-east-1"), now=when + timedelta(days=30))
    assert fresh.image_id == image and fresh.warning is None
    stale = resolve_ami(pinned, ec2_client, aws.client("ssm", "us-east-1"), now=when + timedelta(days=200))
    assert "200 days ago" in stale.warning and "ami_flavour: auto" in stale.warning
    assert stale_warning(flavour, "2025-01-01T00:00:00.000Z", datetime(2025, 6, 1, tzinfo=UTC)) is None
