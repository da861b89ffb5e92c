"""AWS's documented rules that moto does not enforce, as one table (RULES), each rule with the
documentation page it comes from; tests/peers/aws_gate.py checks every EC2, Auto Scaling, IAM and
S3 request the tests send against it (in-process clients and `fab`/boot subprocesses alike) and
answers a violation as AWS would: the documented error code and message, in the service's XML.

A check sees one request as `Call`: the service (from the SigV4 credential scope), the action,
and its parameters un-flattened from the query protocol ("NetworkInterface.1.SubnetId" →
params["NetworkInterface"][0]["SubnetId"]; Auto Scaling's and IAM's "member" levels dropped).
Checks that need AWS's state (a security group's rules, an instance type's EFA support, a launch
template's data, a subnet's zone) ask moto itself through `Call.moto(service)`, a client that goes
straight to moto's server (not through the gate).

Where AWS accepts a request and fails later (an EFA group without its outbound rule: the instances
start, NCCL hangs), the rule says so, and refuses with a code of the stand-in's own
(`SpotrunStandIn.*`) rather than invent one of AWS's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions


@dataclass
class Call:
    service: str  # "ec2", "autoscaling", "iam", "s3"
    action: str  # "RunInstances"; for S3 the HTTP method
    params: dict[str, Any]  # un-flattened query parameters; for S3: {"Bucket", "Key"}
    region: str
    moto: Callable[[str], Any]  # service → a boto3 client on moto's server itself


@dataclass(frozen=True)
class Rule:
    rule_id: str
    service: str
    actions: tuple[str, ...]  # () = every action of the service
    code: str
    source: str  # the documentation page
    says: str  # the documented rule, in a line
    check: Callable[[Call], str | None]  # the refusal message, or None
    status: int = 400


def unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """Query-protocol parameters as nested dicts and lists (lists ordered by their 1-based index)."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        parts = [p for p in key.split(".") if p != "member"]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # a scalar where a structure was expected: keep the scalar
                break
        else:
            node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists(node[k]) for k in sorted(node, key=int)]
    return {k: _lists(v) for k, v in node.items()}


def _list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _true(value: Any) -> bool:
    return str(value).lower() == "true"


# --- EC2 RunInstances: network interfaces ------------------------------------------------------
RUN = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html"
NIC = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceNetworkInterfaceSpecification.html"
EFA = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa.html"
EFA_SG = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start.html#efa-start-security"


def _nics(call: Call) -> list[dict]:
    return _list(call.params.get("NetworkInterface"))


def nic_and_groups(call: Call) -> str | None:
    if _nics(call) and (call.params.get("SecurityGroupId") or call.params.get("SecurityGroup")):
        return (
            "Network interfaces and an instance-level security groups may not be specified on the "
            "same request"
        )
    return None


def nic_and_subnet(call: Call) -> str | None:
    if _nics(call) and call.params.get("SubnetId"):
        return "Network interfaces and an instance-level subnet ID may not be specified on the same request"
    return None


def nic_subnet(call: Call) -> str | None:
    for k, nic in enumerate(_nics(call), 1):
        if not nic.get("NetworkInterfaceId") and not nic.get("SubnetId"):
            return f"The request must contain the parameter networkInterface.{k}.subnetId"
    return None


def nic_device_index(call: Call) -> str | None:
    for nic in _nics(call):
        if nic.get("DeviceIndex") is None and nic.get("NetworkCardIndex") is None:
            return "When specifying network interfaces, you must specify the device index"
    return None


def public_ip_one_nic(call: Call) -> str | None:
    nics = _nics(call)
    if len(nics) > 1 and any("AssociatePublicIpAddress" in n for n in nics):
        return (
            "The associatePublicIPAddress parameter cannot be specified when launching with "
            "multiple network interfaces."
        )
    return None


def public_ip_eth0(call: Call) -> str | None:
    for nic in _nics(call):
        if "AssociatePublicIpAddress" in nic and str(nic.get("DeviceIndex", "0")) != "0":
            return (
                "The associatePublicIPAddress parameter can only be specified for the network "
                "interface with DeviceIndex 0."
            )
    return None


def public_ip_new_nic(call: Call) -> str | None:
    for nic in _nics(call):
        if _true(nic.get("AssociatePublicIpAddress")) and nic.get("NetworkInterfaceId"):
            return (
                "The associatePublicIPAddress parameter cannot be specified for an existing "
                "network interface."
            )
    return None


def efa_type(call: Call) -> str | None:
    if not any(n.get("InterfaceType") == "efa" for n in _nics(call)):
        return None
    itype = call.params.get("InstanceType", "m1.small")
    found = call.moto("ec2").describe_instance_types(InstanceTypes=[itype])["InstanceTypes"]
    if not (found and found[0].get("NetworkInfo", {}).get("EfaSupported")):
        return f"The instance type '{itype}' does not support Elastic Fabric Adapter (EFA) interfaces."
    return None


def _self_all_traffic(perms: list[dict], group_id: str) -> bool:
    return any(
        p.get("IpProtocol") == "-1" and group_id in [g.get("GroupId") for g in p.get("UserIdGroupPairs", [])]
        for p in perms
    )


def efa_group(call: Call) -> str | None:
    for nic in _nics(call):
        if nic.get("InterfaceType") != "efa":
            continue
        ids = _list(nic.get("SecurityGroupId"))
        groups = call.moto("ec2").describe_security_groups(GroupIds=ids)["SecurityGroups"] if ids else []
        if not any(
            _self_all_traffic(g.get("IpPermissions", []), g["GroupId"])
            and _self_all_traffic(g.get("IpPermissionsEgress", []), g["GroupId"])
            for g in groups
        ):
            return (
                f"stand-in: none of the EFA interface's security groups {ids} allows all traffic both "
                "in from and out to itself; AWS starts such instances, and EFA traffic (NCCL) hangs"
            )
    return None


def zone_vs_subnet(call: Call) -> str | None:
    zone = (call.params.get("Placement") or {}).get("AvailabilityZone")
    subnets = [n["SubnetId"] for n in _nics(call) if n.get("SubnetId")] + _list(call.params.get("SubnetId"))
    if not zone or not subnets:
        return None
    for s in call.moto("ec2").describe_subnets(SubnetIds=subnets)["Subnets"]:
        if s["AvailabilityZone"] != zone:
            return (
                f"Value ({zone}) for parameter availabilityZone is invalid. Subnet '{s['SubnetId']}' "
                f"is in the availability zone {s['AvailabilityZone']}"
            )
    return None


# --- tags ----------------------------------------------------------------------------------------
EC2_TAGS = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions"
ASG_TAGS = "https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-tagging.html"
IAM_TAGS = "https://docs.aws.amazon.com/IAM/latest/UserGuide/id_tags.html#id_tags_rules_creating"


def _tag_sets(call: Call) -> list[list[dict]]:
    """Each resource's tags in the request: EC2's TagSpecification.N.Tag / CreateTags' Tag, the
    launch template data's own specifications, Auto Scaling's and IAM's Tags."""
    p = call.params
    sets = [_list(spec.get("Tag")) for spec in _list(p.get("TagSpecification"))]
    data = p.get("LaunchTemplateData") or {}
    sets += [_list(spec.get("Tag")) for spec in _list(data.get("TagSpecification"))]
    if call.action == "CreateTags":
        sets.append(_list(p.get("Tag")))
    if p.get("Tags"):
        sets.append(_list(p.get("Tags")))
    return [[t for t in s if isinstance(t, dict)] for s in sets]


def tag_count(call: Call) -> str | None:
    if any(len(s) > 50 for s in _tag_sets(call)):
        return "The maximum number of tags per resource (50) has been exceeded"
    return None


def tag_key_length(call: Call) -> str | None:
    for s in _tag_sets(call):
        for t in s:
            if len(t.get("Key", "")) > 128:
                return f"Tag key exceeds the maximum length of 128 characters: {t['Key'][:20]}..."
    return None


def tag_value_length(call: Call) -> str | None:
    for s in _tag_sets(call):
        for t in s:
            if len(t.get("Value", "")) > 256:
                return f"Tag value exceeds the maximum length of 256 characters for key {t.get('Key')}"
    return None


def tag_aws_prefix(call: Call) -> str | None:
    for s in _tag_sets(call):
        for t in s:
            if t.get("Key", "").lower().startswith("aws:"):
                return f"Tag keys starting with 'aws:' are reserved for internal use: {t['Key']}"
    return None


# --- names ---------------------------------------------------------------------------------------
LT = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplate.html"
KEY = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateKeyPair.html"
SG = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html"
ROLE = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateRole.html"
PROFILE = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateInstanceProfile.html"
IAM_QUOTAS = "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html"
ASG = "https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CreateAutoScalingGroup.html"
IAM_NAME = re.compile(r"[\w+=,.@-]+")


def launch_template_name(call: Call) -> str | None:
    name = call.params.get("LaunchTemplateName", "")
    if not (3 <= len(name) <= 128 and re.fullmatch(r"[a-zA-Z0-9().\-/_]+", name)):
        return (
            "A launch template name must be between 3 and 128 characters, and may contain letters, "
            "numbers, and the following characters: - ( ) . / _.'"
        )
    return None


def key_pair_name(call: Call) -> str | None:
    name = call.params.get("KeyName", "")
    if len(name) > 255 or not name.isascii():
        return f"Value ({name[:20]}...) for parameter keyName is invalid. Up to 255 ASCII characters"
    return None


def security_group_name(call: Call) -> str | None:
    name, description = call.params.get("GroupName", ""), call.params.get("GroupDescription", "")
    if len(name) > 255 or name.lower().startswith("sg-"):
        return f"Invalid security group name {name[:20]!r}: up to 255 characters, not starting with sg-"
    if len(description) > 255:
        return "Invalid security group description: up to 255 characters"
    return None


def _iam_name(field: str, limit: int) -> Callable[[Call], str | None]:
    def check(call: Call) -> str | None:
        name = call.params.get(field, "")
        if len(name) > limit:
            return (
                f"1 validation error detected: Value '{name}' at '{field[0].lower() + field[1:]}' failed "
                f"to satisfy constraint: Member must have length less than or equal to {limit}"
            )
        if not IAM_NAME.fullmatch(name):
            return (
                f"1 validation error detected: Value '{name}' at '{field[0].lower() + field[1:]}' failed "
                r"to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@-]+"
            )
        return None

    return check


def role_description(call: Call) -> str | None:
    if len(call.params.get("Description", "")) > 1000:
        return (
            "1 validation error detected: Value at 'description' failed to satisfy constraint: "
            "Member must have length less than or equal to 1000"
        )
    return None


def role_policy_size(call: Call) -> str | None:
    document = call.params.get("PolicyDocument", "")
    if len(re.sub(r"\s", "", document)) > 10240:
        return f"Maximum policy size of 10240 bytes exceeded for role {call.params.get('RoleName')}"
    return None


def asg_name(call: Call) -> str | None:
    name = call.params.get("AutoScalingGroupName", "")
    if not 1 <= len(name) <= 255:
        return (
            "1 validation error detected: Value at 'autoScalingGroupName' failed to satisfy "
            "constraint: Member must have length less than or equal to 255"
        )
    return None


# --- Auto Scaling: the template of a mixed instances policy, subnets in the zones ---------------
MIXED = "https://docs.aws.amazon.com/autoscaling/ec2/userguide/create-launch-template.html"


def _template_data(call: Call, spec: dict) -> dict:
    version = spec.get("Version") or "$Default"
    by = (
        {"LaunchTemplateId": spec["LaunchTemplateId"]}
        if spec.get("LaunchTemplateId")
        else {"LaunchTemplateName": spec.get("LaunchTemplateName", "")}
    )
    versions = call.moto("ec2").describe_launch_template_versions(**by, Versions=[version])
    found = versions.get("LaunchTemplateVersions", [])
    return found[0].get("LaunchTemplateData", {}) if found else {}


def group_template(call: Call) -> dict | None:
    """The launch template spec of a CreateAutoScalingGroup/UpdateAutoScalingGroup request."""
    mixed = call.params.get("MixedInstancesPolicy") or {}
    spec = (mixed.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification")
    return spec or call.params.get("LaunchTemplate")


def mixed_template_market(call: Call) -> str | None:
    mixed = call.params.get("MixedInstancesPolicy") or {}
    spec = (mixed.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification")
    if spec and _template_data(call, spec).get("InstanceMarketOptions"):
        return (
            "Incompatible launch template: You cannot use a launch template that is set to request "
            "Spot Instances (InstanceMarketOptions) when you configure an Auto Scaling group with a "
            "mixed instances policy. Add a different launch template to the group and try again."
        )
    return None


def subnets_in_zones(call: Call) -> str | None:
    zones = _list(call.params.get("AvailabilityZones"))
    subnets = [s.strip() for s in call.params.get("VPCZoneIdentifier", "").split(",") if s.strip()]
    if not zones or not subnets:
        return None
    for s in call.moto("ec2").describe_subnets(SubnetIds=subnets)["Subnets"]:
        if s["AvailabilityZone"] not in zones:
            return (
                f"The subnet '{s['SubnetId']}' is in {s['AvailabilityZone']}, not in the group's "
                f"Availability Zones ({', '.join(zones)})"
            )
    return None


# --- S3 ------------------------------------------------------------------------------------------
S3_KEYS = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-key-naming.html"


def s3_key_length(call: Call) -> str | None:
    if len(call.params.get("Key", "").encode()) > 1024:
        return "Your key is too long"
    return None


_EC2_TAGGED = ()  # every EC2 action: TagSpecification rides on many of them
_NAMES = ("CreateKeyPair", "ImportKeyPair")
IAM_TAGGED = ("CreateRole", "CreateInstanceProfile", "TagRole", "TagInstanceProfile")

RULES: list[Rule] = [
    Rule("ec2-run-nic-vs-groups", "ec2", ("RunInstances",), "InvalidParameterCombination", RUN,
         "with a network interface, security groups go in the interface, not SecurityGroupIds",
         nic_and_groups),
    Rule("ec2-run-nic-vs-subnet", "ec2", ("RunInstances",), "InvalidParameterCombination", RUN,
         "with a network interface, the subnet goes in the interface, not SubnetId", nic_and_subnet),
    Rule("ec2-run-nic-subnet", "ec2", ("RunInstances",), "MissingParameter", RUN,
         "a new network interface carries its SubnetId (stand-in: AWS's SubnetId note read strictly)",
         nic_subnet),
    Rule("ec2-run-nic-device-index", "ec2", ("RunInstances",), "MissingParameter", NIC,
         "a network interface given at launch must have its device index", nic_device_index),
    Rule("ec2-run-public-ip-one-nic", "ec2", ("RunInstances",), "InvalidParameterCombination", NIC,
         "AssociatePublicIpAddress: not with more than one network interface", public_ip_one_nic),
    Rule("ec2-run-public-ip-eth0", "ec2", ("RunInstances",), "InvalidParameterCombination", NIC,
         "AssociatePublicIpAddress: only for eth0 (device index 0)", public_ip_eth0),
    Rule("ec2-run-public-ip-new-nic", "ec2", ("RunInstances",), "InvalidParameterCombination", NIC,
         "AssociatePublicIpAddress: only for a new network interface, not an existing one",
         public_ip_new_nic),
    Rule("ec2-run-efa-type", "ec2", ("RunInstances",), "InvalidParameterCombination", EFA,
         "an EFA interface only on an instance type whose NetworkInfo.EfaSupported is true", efa_type),
    Rule("ec2-run-efa-group", "ec2", ("RunInstances",), "SpotrunStandIn.EfaSecurityGroup", EFA_SG,
         "an EFA interface's security group allows all traffic in from AND out to itself "
         "(AWS launches without it; EFA traffic then hangs)", efa_group),
    Rule("ec2-run-zone-vs-subnet", "ec2", ("RunInstances",), "InvalidParameterValue", RUN,
         "Placement.AvailabilityZone must be the zone of the subnet the instance launches in",
         zone_vs_subnet),
    Rule("ec2-tags-per-resource", "ec2", _EC2_TAGGED, "TagLimitExceeded", EC2_TAGS,
         "at most 50 tags per resource", tag_count),
    Rule("ec2-tag-key-length", "ec2", _EC2_TAGGED, "InvalidParameterValue", EC2_TAGS,
         "a tag key is at most 128 characters", tag_key_length),
    Rule("ec2-tag-value-length", "ec2", _EC2_TAGGED, "InvalidParameterValue", EC2_TAGS,
         "a tag value is at most 256 characters", tag_value_length),
    Rule("ec2-tag-aws-prefix", "ec2", _EC2_TAGGED, "InvalidParameterValue", EC2_TAGS,
         "tag keys beginning with aws: are reserved", tag_aws_prefix),
    Rule("ec2-launch-template-name", "ec2", ("CreateLaunchTemplate",),
         "InvalidLaunchTemplateName.MalformedException", LT,
         "a launch template name: 3-128 characters of letters, digits and ( ) . - / _",
         launch_template_name),
    Rule("ec2-key-pair-name", "ec2", _NAMES, "InvalidParameterValue", KEY,
         "a key pair name: up to 255 ASCII characters", key_pair_name),
    Rule("ec2-security-group-name", "ec2", ("CreateSecurityGroup",), "InvalidParameterValue", SG,
         "a security group name and description: up to 255 characters; the name not starting sg-",
         security_group_name),
    Rule("asg-name-length", "autoscaling", ("CreateAutoScalingGroup",), "ValidationError", ASG,
         "an Auto Scaling group name: 1-255 characters", asg_name),
    Rule("asg-mixed-template-market", "autoscaling", ("CreateAutoScalingGroup", "UpdateAutoScalingGroup"),
         "ValidationError", MIXED,
         "a launch template used by a mixed instances policy must not request Spot "
         "(no InstanceMarketOptions)", mixed_template_market),
    Rule("asg-subnets-in-zones", "autoscaling", ("CreateAutoScalingGroup", "UpdateAutoScalingGroup"),
         "ValidationError", ASG,
         "with AvailabilityZones and VPCZoneIdentifier, the subnets lie in those zones", subnets_in_zones),
    Rule("asg-tags-per-group", "autoscaling", ("CreateAutoScalingGroup", "CreateOrUpdateTags"),
         "ValidationError", ASG_TAGS, "at most 50 tags per Auto Scaling group", tag_count),
    Rule("asg-tag-lengths", "autoscaling", ("CreateAutoScalingGroup", "CreateOrUpdateTags"),
         "ValidationError", ASG_TAGS, "a tag key at most 128 characters, a value at most 256",
         lambda call: tag_key_length(call) or tag_value_length(call)),
    Rule("asg-tag-aws-prefix", "autoscaling", ("CreateAutoScalingGroup", "CreateOrUpdateTags"),
         "ValidationError", ASG_TAGS, "tag keys beginning with aws: are reserved", tag_aws_prefix),
    Rule("iam-role-name", "iam", ("CreateRole",), "ValidationError", ROLE,
         r"a role name: 1-64 characters of [\w+=,.@-]", _iam_name("RoleName", 64)),
    Rule("iam-instance-profile-name", "iam", ("CreateInstanceProfile",), "ValidationError", PROFILE,
         r"an instance profile name: 1-128 characters of [\w+=,.@-]", _iam_name("InstanceProfileName", 128)),
    Rule("iam-role-description", "iam", ("CreateRole",), "ValidationError", ROLE,
         "a role description: up to 1000 characters", role_description),
    Rule("iam-role-policy-size", "iam", ("PutRolePolicy",), "LimitExceeded", IAM_QUOTAS,
         "a role's inline policies: at most 10,240 characters (whitespace not counted)", role_policy_size,
         status=409),
    Rule("iam-tags-per-resource", "iam", IAM_TAGGED, "LimitExceeded", IAM_TAGS,
         "at most 50 tags per IAM resource", tag_count, status=409),
    Rule("iam-tag-lengths", "iam", IAM_TAGGED,
         "InvalidInput", IAM_TAGS, "a tag key at most 128 characters, a value at most 256",
         lambda call: tag_key_length(call) or tag_value_length(call)),
    Rule("iam-tag-aws-prefix", "iam", IAM_TAGGED,
         "InvalidInput", IAM_TAGS, "tag keys beginning with aws: are reserved", tag_aws_prefix),
    Rule("s3-key-length", "s3", ("PUT", "POST"), "KeyTooLongError", S3_KEYS,
         "an object key is at most 1024 bytes (UTF-8)", s3_key_length),
]  # fmt: skip


def violation(call: Call) -> tuple[Rule, str] | None:
    """The first rule ``call`` breaks, with its message (None: it breaks none)."""
    for rule in RULES:
        if rule.service == call.service and (not rule.actions or call.action in rule.actions):
            try:
                message = rule.check(call)
            except botocore.exceptions.ClientError:
                continue  # moto refused the look-up (an unknown group, subnet, template): let it answer
            if message:
                return rule, message
    return None
