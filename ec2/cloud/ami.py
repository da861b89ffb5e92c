"""Which machine image to boot: the latest Deep Learning AMI of a flavour, or a fixed id.

AWS publishes the newest DLAMI of each flavour as a public SSM parameter; that is the documented,
stable way to find it. When SSM is unavailable (no permission, a region without the parameter),
the fallback asks describe_images for Amazon-owned images with the DLAMI name pattern and takes the
newest. Either way the choice is printed with its reason, because "which AMI did I get?" is the
first question when a launch behaves differently from last week.

`ami_flavour: auto` lists every public DLAMI parameter of the architecture and keeps the
OSS-driver PyTorch flavours (not Base, not Neuron); of those on the newest Ubuntu LTS it takes the
highest PyTorch, versions compared as numbers (2.10 is newer than 2.9). A pinned flavour goes out
of support within a year, so one whose newest image is older than STALE_DAYS is warned about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from common.aws import AWS_FAILURES, aws_errors, error_code
from ec2.errors import AwsError, ConfigError

SSM_ROOT = "/aws/service/deeplearning/ami/{arch}"
SSM_PARAMETER = SSM_ROOT + "/{flavour}/latest/ami-id"
AUTO = "auto"
# DLAMI framework versions get about a year of patches; warn at half of that.
STALE_DAYS = 183
PYTORCH_FLAVOUR = re.compile(
    r"^oss-nvidia-driver-gpu-pytorch-(?P<torch>\d+(?:\.\d+)*)-ubuntu-(?P<os>\d+\.\d+)$"
)
# "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 20250601"
PYTORCH_IMAGE = re.compile(
    r"^Deep Learning OSS Nvidia Driver AMI GPU PyTorch (?P<torch>\d+(?:\.\d+)*) \(Ubuntu (?P<os>\d+\.\d+)\)"
)


@dataclass(frozen=True)
class Ami:
    image_id: str
    name: str
    root_device: str
    reason: str
    created: str = ""  # the image's CreationDate (ISO 8601)
    warning: str | None = None  # e.g. a pinned flavour gone stale


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True, order=True)
class Flavour:
    """A PyTorch DLAMI flavour, ordered by (Ubuntu, PyTorch) as numbers."""

    ubuntu: tuple[int, ...]
    torch: tuple[int, ...]
    name: str

    @property
    def lts(self) -> bool:
        # Ubuntu LTS releases are the even years' April releases (22.04, 24.04, 26.04).
        return len(self.ubuntu) == 2 and self.ubuntu[0] % 2 == 0 and self.ubuntu[1] == 4

    def describe(self) -> str:
        return f"PyTorch {'.'.join(map(str, self.torch))} on Ubuntu {self.ubuntu[0]}.{self.ubuntu[1]:02d}"


def parse_flavour(name: str) -> Flavour | None:
    m = PYTORCH_FLAVOUR.match(name)
    return Flavour(_version(m["os"]), _version(m["torch"]), name) if m else None


def flavour_of_image(image_name: str) -> Flavour | None:
    """The flavour an image name stands for (None: not an OSS-driver PyTorch DLAMI)."""
    m = PYTORCH_IMAGE.match(image_name)
    if not m:
        return None
    return Flavour(
        _version(m["os"]),
        _version(m["torch"]),
        f"oss-nvidia-driver-gpu-pytorch-{m['torch']}-ubuntu-{m['os']}",
    )


def choose(flavours: Iterable[Flavour]) -> Flavour | None:
    """The highest PyTorch on the newest Ubuntu LTS (any Ubuntu when no LTS is offered)."""
    found = set(flavours)
    lts = [f for f in found if f.lts]
    return max(lts or found, default=None)


def why(chosen: Flavour, among: int, source: str) -> str:
    return (
        f"auto: {chosen.describe()}, the highest PyTorch on the newest Ubuntu LTS of {among} "
        f"OSS-driver PyTorch DLAMI flavours, from {source}"
    )


def listed_flavours(ssm, architecture: str) -> dict[Flavour, str]:
    """Every OSS-driver PyTorch flavour the public parameters list, with its latest image id."""
    root = SSM_ROOT.format(arch=architecture)
    out: dict[Flavour, str] = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=root, Recursive=True):
        for parameter in page["Parameters"]:
            rest = parameter["Name"].removeprefix(root + "/")
            flavour_name, _, tail = rest.partition("/")
            flavour = parse_flavour(flavour_name)
            if flavour is not None and tail == "latest/ami-id":
                out[flavour] = parameter["Value"]
    return out


def stale_warning(flavour: str, created: str, now: datetime | None = None) -> str | None:
    """A pinned flavour whose newest image is old: AWS may have stopped patching it."""
    if not created:
        return None
    try:
        built = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    if built.tzinfo is None:
        built = built.replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - built).days
    if age <= STALE_DAYS:
        return None
    return (
        f"the newest {flavour} image was built {built:%Y-%m-%d}, {age} days ago: AWS may no longer "
        "patch it; set `ami_flavour: auto` for the newest supported PyTorch DLAMI"
    )


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


def _dlami_images(ec2, cfg) -> list[dict]:
    with aws_errors("searching Deep Learning AMIs (describe_images)"):
        return ec2.describe_images(
            Owners=list(cfg.ami_owners),
            Filters=[
                {"Name": "name", "Values": [DLAMI_NAME_FILTER]},
                {"Name": "state", "Values": ["available"]},
                {"Name": "architecture", "Values": [cfg.architecture]},
            ],
        )["Images"]


def _newest(images: list[dict]) -> dict:
    return max(images, key=lambda img: img.get("CreationDate", ""))


def _newest_by_name(ec2, cfg) -> tuple[dict, str]:
    """The newest image of the flavour (auto: of the flavour `choose` picks), and why."""
    images = _dlami_images(ec2, cfg)
    if cfg.ami_flavour == AUTO:
        by_flavour: dict[Flavour, list[dict]] = {}
        for img in images:
            flavour = flavour_of_image(img.get("Name", ""))
            if flavour is not None:
                by_flavour.setdefault(flavour, []).append(img)
        chosen = choose(by_flavour)
        if chosen is None:
            raise AwsError(
                f"no OSS-driver PyTorch Deep Learning AMI ({cfg.architecture}) in this region; pin "
                "`ami_flavour:` to one that exists or set `ami:` to an ami id",
                "NoMatchingAmi",
            )
        return _newest(by_flavour[chosen]), why(chosen, len(by_flavour), "describe_images")
    matching = [img for img in images if _matches_flavour(img.get("Name", ""), cfg.ami_flavour)]
    if not matching:
        raise AwsError(
            f"no available Deep Learning AMI matching {cfg.ami_flavour!r} ({cfg.architecture}) in this "
            "region; pick another `ami_flavour` (or auto) or set `ami:` to an ami id",
            "NoMatchingAmi",
        )
    return _newest(matching), "newest matching image by describe_images"


def _from_ssm(cfg, ssm) -> tuple[str, str]:
    """(image id, reason) from the public parameters; raises botocore's error when unavailable."""
    if cfg.ami_flavour != AUTO:
        parameter = ssm_parameter(cfg.architecture, cfg.ami_flavour)
        return ssm.get_parameter(Name=parameter)["Parameter"]["Value"], f"latest via SSM {parameter}"
    flavours = listed_flavours(ssm, cfg.architecture)
    chosen = choose(flavours)
    if chosen is None:
        raise LookupError("no OSS-driver PyTorch flavour listed")
    return flavours[chosen], why(chosen, len(flavours), f"SSM {SSM_ROOT.format(arch=cfg.architecture)}")


def _ami(image: dict, reason: str, warning: str | None = None) -> Ami:
    return Ami(
        image["ImageId"],
        image.get("Name", ""),
        image.get("RootDeviceName", "/dev/sda1"),
        reason,
        image.get("CreationDate", ""),
        warning,
    )


def resolve_ami(cfg, ec2, ssm, now: datetime | None = None) -> Ami:
    """The image to launch, with the reason it was chosen (and a warning for a stale pin)."""
    if cfg.ami != "auto":
        return _ami(_describe(ec2, cfg.ami), "set in config")
    try:
        image_id, reason = _from_ssm(cfg, ssm)
        image = _describe(ec2, image_id)
    except (*AWS_FAILURES, LookupError) as e:
        code = error_code(e) if hasattr(e, "response") else (str(e) or type(e).__name__)
        image, chosen = _newest_by_name(ec2, cfg)
        reason = f"{chosen}; SSM unavailable: {code}"
    warning = None
    if cfg.ami_flavour != AUTO:
        warning = stale_warning(cfg.ami_flavour, image.get("CreationDate", ""), now)
    return _ami(image, reason, warning)
