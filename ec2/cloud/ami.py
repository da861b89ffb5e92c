"""Which machine image to boot: the latest Deep Learning AMI of a flavour, or a fixed id.

AWS publishes the newest DLAMI of each flavour as a public SSM parameter; that is the documented,
stable way to find it. When SSM is unavailable (no permission, a region without the parameter),
the fallback asks describe_images for Amazon-owned images with the DLAMI name pattern and takes the
newest. Either way the choice is printed with its reason, because "which AMI did I get?" is the
first question when a launch behaves differently from last week.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.aws import AWS_FAILURES, aws_errors, error_code
from ec2.errors import AwsError, ConfigError

SSM_PARAMETER = "/aws/service/deeplearning/ami/{arch}/{flavour}/latest/ami-id"


@dataclass(frozen=True)
class Ami:
    image_id: str
    name: str
    root_device: str
    reason: str


def ssm_parameter(architecture: str, flavour: str) -> str:
    return SSM_PARAMETER.format(arch=architecture, flavour=flavour)


# describe_images name filters are case-sensitive while flavours are lower-case
# (oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04 names "Deep Learning OSS Nvidia Driver AMI GPU
# PyTorch 2.7 (Ubuntu 22.04) 20250601"), so the filter only narrows to DLAMIs and _matches_flavour
# compares the words.
DLAMI_NAME_FILTER = "Deep Learning*"


def _matches_flavour(image_name: str, flavour: str) -> bool:
    """Every word of the flavour appears in the image name, in order, ignoring case and the
    parentheses AWS puts around the OS."""
    text = image_name.lower().replace("(", " ").replace(")", " ")
    pos = 0
    for word in flavour.lower().split("-"):
        found = text.find(word, pos)
        if found < 0:
            return False
        pos = found + len(word)
    return True


def _describe(ec2, image_id: str) -> dict:
    with aws_errors(f"looking up AMI {image_id}"):
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    if not images:
        raise ConfigError(f"AMI {image_id} not found in this region; set `ami: auto` or a valid ami id")
    return images[0]


def _newest_by_name(ec2, cfg) -> dict:
    with aws_errors("searching Deep Learning AMIs (describe_images)"):
        images = ec2.describe_images(
            Owners=list(cfg.ami_owners),
            Filters=[
                {"Name": "name", "Values": [DLAMI_NAME_FILTER]},
                {"Name": "state", "Values": ["available"]},
                {"Name": "architecture", "Values": [cfg.architecture]},
            ],
        )["Images"]
    matching = [img for img in images if _matches_flavour(img.get("Name", ""), cfg.ami_flavour)]
    if not matching:
        raise AwsError(
            f"no available Deep Learning AMI matching {cfg.ami_flavour!r} ({cfg.architecture}) in this "
            "region; pick another `ami_flavour` or set `ami:` to an ami id",
            "NoMatchingAmi",
        )
    return max(matching, key=lambda img: img.get("CreationDate", ""))


def resolve_ami(cfg, ec2, ssm) -> Ami:
    """The image to launch, with the reason it was chosen."""
    if cfg.ami != "auto":
        image = _describe(ec2, cfg.ami)
        return Ami(cfg.ami, image.get("Name", ""), image.get("RootDeviceName", "/dev/sda1"), "set in config")
    parameter = ssm_parameter(cfg.architecture, cfg.ami_flavour)
    try:
        image_id = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        reason = f"latest via SSM {parameter}"
    except AWS_FAILURES as e:
        code = error_code(e) if hasattr(e, "response") else type(e).__name__
        image = _newest_by_name(ec2, cfg)
        return Ami(
            image["ImageId"],
            image.get("Name", ""),
            image.get("RootDeviceName", "/dev/sda1"),
            f"newest matching image by describe_images (SSM {parameter} unavailable: {code})",
        )
    image = _describe(ec2, image_id)
    return Ami(image_id, image.get("Name", ""), image.get("RootDeviceName", "/dev/sda1"), reason)
