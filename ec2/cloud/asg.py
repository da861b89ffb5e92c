"""A detached run's launch template and Auto Scaling group of one (min 0, max 1, desired 1): AWS's
own reconciler keeps one instance alive across spot interruptions, over several instance types
and zones, at no cost, with no process of ours watching.

- The template carries every launch guarantee of `fab launch` (ec2.cloud.launch.instance_settings):
  the newest DLAMI, IMDSv2 required, an encrypted gp3 root, the security group, the key, the
  instance profile, tags on instances and volumes, and the user data that starts the boot.
- The group's mixed instances policy lists `instance_types` over the chosen zones' subnets: 100 %
  spot with price-capacity-optimized allocation, or 100 % on-demand (market: on-demand). With
  market: spot-then-on-demand it starts at 100 % spot, and a failed spot launch while `fab run
  --detach` waits for the first instance switches the group to on-demand (use_on_demand). Capacity
  Rebalance stays off: a replacement launched before the old instance is gone would run a second
  trainer writing the same checkpoint prefix.

Request bodies are pure functions (tests read them); the calls are thin.
https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CreateAutoScalingGroup.html
https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_InstancesDistribution.html
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from common.aws import error_code, translate
from ec2.cloud import propagation
from ec2.cloud.account import partition_of_region
from ec2.errors import AwsError
from ec2.remote.giveup import GIVEUP_TAG

# What a refusal of each call needs granted, for the one-line error.
PERMISSION = {
    "CreateLaunchTemplate": "ec2:CreateLaunchTemplate",
    "DeleteLaunchTemplate": "ec2:DeleteLaunchTemplate",
    "CreateAutoScalingGroup": "autoscaling:CreateAutoScalingGroup",
    "UpdateAutoScalingGroup": "autoscaling:UpdateAutoScalingGroup",
    "DeleteAutoScalingGroup": "autoscaling:DeleteAutoScalingGroup",
    "SetDesiredCapacity": "autoscaling:SetDesiredCapacity",
    "DescribeAutoScalingGroups": "autoscaling:DescribeAutoScalingGroups",
    "DescribeScalingActivities": "autoscaling:DescribeScalingActivities",
}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess"}
GROUP_TAG = "aws:autoscaling:groupName"
# The group's pointer to the run's record in S3 (how `fab watch` finds it from the name alone).
ROOT_TAG = "spotrun:root"
# Why an instance's boot gave up before it could read the record (ec2.remote.giveup writes it).
FAILURE_TAG = GIVEUP_TAG


def group_name(name: str) -> str:
    return f"spotrun-{name}"


def template_name(name: str) -> str:
    return f"spotrun-{name}"


def refused(e: botocore.exceptions.ClientError, operation: str, doing: str) -> AwsError:
    """One line: a missing permission named, else the AWS code and message."""
    code = error_code(e)
    if code in DENIED:
        # AWS names the action it refused ("... is not authorized to perform: iam:PassRole on ...").
        message = e.response.get("Error", {}).get("Message", "")
        named = re.search(r"not authorized to perform: ([A-Za-z0-9-]+:[A-Za-z0-9]+)", message)
        needed = named.group(1) if named else PERMISSION.get(operation, operation)
        return AwsError(
            f"{doing} refused: your IAM identity lacks {needed}; ask for it or use another profile", code
        )
    return translate(e, doing)


def template_data(settings: dict, group_id: str) -> dict:
    """LaunchTemplateData from the instance settings run_instances uses; the market stays out (a
    mixed instances policy refuses a template with InstanceMarketOptions), and the user data is
    base64 here (run_instances encodes it itself; a template does not)."""
    data = {k: v for k, v in settings.items() if k != "UserData"}
    data["UserData"] = base64.b64encode(settings["UserData"].encode()).decode()
    data["SecurityGroupIds"] = [group_id]
    return data


def distribution(market: str, max_price: float | None, prioritized: bool = False) -> dict:
    """``prioritized`` (choose_by: run_cost): the overrides' order is the launch priority, for spot
    (capacity-optimized-prioritized: "the order of instance types in the list of launch template
    overrides from highest to lowest priority", honoured on a best-effort basis after capacity) and
    on-demand (prioritized). https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_InstancesDistribution.html"""
    on_demand = 100 if market == "on-demand" else 0
    dist = {
        "OnDemandAllocationStrategy": "prioritized" if prioritized else "lowest-price",
        "OnDemandBaseCapacity": 0,
        "OnDemandPercentageAboveBaseCapacity": on_demand,
        "SpotAllocationStrategy": "capacity-optimized-prioritized"
        if prioritized
        else "price-capacity-optimized",
    }
    if max_price is not None and on_demand == 0:
        dist["SpotMaxPrice"] = f"{max_price:g}"
    return dist


def group_params(
    name: str,
    template: str,
    instance_types: list[str],
    subnets: list[str],
    market: str,
    max_price: float | None,
    tags: list[dict],
    root: str,
    prioritized: bool = False,
) -> dict:
    """The create_auto_scaling_group request (a pure function: tests read it). ``prioritized``:
    launch in the order of ``instance_types`` (choose_by: run_cost; see distribution)."""
    group = group_name(name)
    return {
        "AutoScalingGroupName": group,
        "MinSize": 0,
        "MaxSize": 1,
        "DesiredCapacity": 1,
        "VPCZoneIdentifier": ",".join(subnets),
        "CapacityRebalance": False,
        "MixedInstancesPolicy": {
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateName": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": t} for t in instance_types],
            },
            "InstancesDistribution": distribution(market, max_price, prioritized),
        },
        # The template tags instances and volumes; the group's own tags let status find it.
        "Tags": [
            {
                "ResourceId": group,
                "ResourceType": "auto-scaling-group",
                "Key": t["Key"],
                "Value": t["Value"],
                "PropagateAtLaunch": False,
            }
            for t in [*tags, {"Key": ROOT_TAG, "Value": root}]
        ],
    }


def create_template(ec2, name: str, data: dict, tags: list[dict]) -> str:
    try:
        response = ec2.create_launch_template(
            LaunchTemplateName=template_name(name),
            LaunchTemplateData=data,
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
        )
    except botocore.exceptions.ClientError as e:
        raise refused(e, "CreateLaunchTemplate", f"creating launch template {template_name(name)}") from None
    return response["LaunchTemplate"]["LaunchTemplateId"]


def delete_template(ec2, name: str) -> bool:
    """True when a template was deleted, False when there was none."""
    try:
        found = ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [template_name(name)]}]
        )["LaunchTemplates"]
        if not found:
            return False
        ec2.delete_launch_template(LaunchTemplateName=template_name(name))
    except botocore.exceptions.ClientError as e:
        if error_code(e) in (
            "InvalidLaunchTemplateName.NotFoundException",
            "InvalidLaunchTemplateId.NotFound",
        ):
            return False
        raise refused(e, "DeleteLaunchTemplate", f"deleting launch template {template_name(name)}") from None
    return True


def spotrun_template_names(ec2, name_tag: str) -> list[str]:
    """The run names of the launch templates spotrun made (tagged `name_tag`) in the region."""
    # https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeLaunchTemplates.html
    # (filter tag-key; paginated by NextToken)
    pages = ec2.get_paginator("describe_launch_templates").paginate(
        Filters=[{"Name": "tag-key", "Values": [name_tag]}]
    )
    return [
        t["LaunchTemplateName"].removeprefix("spotrun-") for page in pages for t in page["LaunchTemplates"]
    ]


def create_group(asg, params: dict, profile: str | None = None, out: Callable[[str], None] = print) -> None:
    """create_auto_scaling_group; with spotrun's own instance ``profile`` in the template, retried
    while Auto Scaling does not see it yet (IAM propagates: ec2.cloud.propagation)."""
    try:
        if profile is None:
            asg.create_auto_scaling_group(**params)
        else:
            propagation.retry_while_propagating(
                lambda: asg.create_auto_scaling_group(**params), "Auto Scaling", profile, out
            )
    except botocore.exceptions.ClientError as e:
        raise refused(
            e, "CreateAutoScalingGroup", f"creating Auto Scaling group {params['AutoScalingGroupName']}"
        ) from None


@dataclass(frozen=True)
class Group:
    name: str
    desired: int
    instance_ids: list[str]
    tags: dict[str, str]
    status: str | None  # "Delete in progress" while going away


def _group(raw: dict) -> Group:
    return Group(
        name=raw["AutoScalingGroupName"],
        desired=raw["DesiredCapacity"],
        instance_ids=[i["InstanceId"] for i in raw.get("Instances", [])],
        tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
        status=raw.get("Status"),
    )


def describe_group(asg, name: str) -> Group | None:
    try:
        groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name(name)])[
            "AutoScalingGroups"
        ]
    except botocore.exceptions.ClientError as e:
        raise refused(e, "DescribeAutoScalingGroups", f"looking up group {group_name(name)}") from None
    return _group(groups[0]) if groups else None


def spotrun_groups(asg, name_tag: str) -> list[Group]:
    """Every group carrying spotrun's name tag (the detached runs of this account and region)."""
    out = []
    try:
        for page in asg.get_paginator("describe_auto_scaling_groups").paginate(
            Filters=[{"Name": "tag-key", "Values": [name_tag]}]
        ):
            out += [_group(g) for g in page["AutoScalingGroups"]]
    except botocore.exceptions.ClientError as e:
        raise refused(e, "DescribeAutoScalingGroups", "listing spotrun's Auto Scaling groups") from None
    return out


def set_desired(asg, name: str, desired: int) -> None:
    try:
        asg.set_desired_capacity(
            AutoScalingGroupName=group_name(name), DesiredCapacity=desired, HonorCooldown=False
        )
    except botocore.exceptions.ClientError as e:
        raise refused(e, "SetDesiredCapacity", f"setting desired capacity of {group_name(name)}") from None


def delete_group(asg, name: str) -> bool:
    """Delete the group, terminating its instances (ForceDelete). False when there was none."""
    try:
        asg.delete_auto_scaling_group(AutoScalingGroupName=group_name(name), ForceDelete=True)
    except botocore.exceptions.ClientError as e:
        if error_code(e) == "ValidationError" and "not found" in str(e).lower():
            return False
        raise refused(
            e, "DeleteAutoScalingGroup", f"deleting Auto Scaling group {group_name(name)}"
        ) from None
    return True


def activities(asg, name: str) -> list[dict]:
    """The group's scaling activities, newest first (launches, terminations, failures and why)."""
    try:
        pages = asg.get_paginator("describe_scaling_activities").paginate(
            AutoScalingGroupName=group_name(name)
        )
        return [a for page in pages for a in page["Activities"]]
    except botocore.exceptions.ClientError as e:
        raise refused(e, "DescribeScalingActivities", f"reading activities of {group_name(name)}") from None


def use_on_demand(asg, name: str, profile: str | None = None, out: Callable[[str], None] = print) -> None:
    """Switch the group's purchase option to on-demand (market: spot-then-on-demand, when spot
    capacity failed): later launches of the group are on-demand. Auto Scaling checks the template
    again, so spotrun's own ``profile`` in it is waited for as in create_group."""
    try:
        [raw] = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name(name)])[
            "AutoScalingGroups"
        ]
        # The whole policy, its launch template part unchanged (moto fails on a partial one).
        policy = raw["MixedInstancesPolicy"]
        spec = policy["LaunchTemplate"]["LaunchTemplateSpecification"]
        # Describe answers with the template's id and name; an update takes one of them.
        policy["LaunchTemplate"]["LaunchTemplateSpecification"] = {
            "LaunchTemplateName": spec["LaunchTemplateName"],
            "Version": spec.get("Version", "$Latest"),
        }
        policy["InstancesDistribution"] = distribution("on-demand", None)
        update = {"AutoScalingGroupName": group_name(name), "MixedInstancesPolicy": policy}
        if profile is None:
            asg.update_auto_scaling_group(**update)
        else:
            propagation.retry_while_propagating(
                lambda: asg.update_auto_scaling_group(**update), "Auto Scaling", profile, out
            )
    except botocore.exceptions.ClientError as e:
        raise refused(e, "UpdateAutoScalingGroup", f"switching {group_name(name)} to on-demand") from None


def wait_first_instance(
    asg,
    name: str,
    budget_s: float,
    *,
    every_s: float = 5.0,
    out: Callable[[str], None] = print,
    on_failed: Callable[[dict], None] | None = None,
) -> str:
    """The id of the group's first instance. Auto Scaling has no waiter for this: poll the group
    within the budget, showing each failed launch activity (its message says why) and handing it
    to `on_failed`."""
    end = time.monotonic() + budget_s
    shown: set[str] = set()
    while True:
        group = describe_group(asg, name)
        if group is not None and group.instance_ids:
            return group.instance_ids[0]
        for a in activities(asg, name):
            if a.get("StatusCode") in ("Failed", "Cancelled") and a["ActivityId"] not in shown:
                shown.add(a["ActivityId"])
                out(f"launch activity {a['StatusCode'].lower()}: {a.get('StatusMessage', '')}")
                if on_failed is not None:
                    on_failed(a)
        if time.monotonic() > end:
            raise AwsError(
                f"{group_name(name)} launched no instance in {budget_s:g} s"
                + (" (see the failed activities above)" if shown else "")
                + f"; `fab watch --name {name}` follows it, `fab terminate --name {name}` removes it",
                "NoInstance",
            )
        time.sleep(every_s)


def instance_role_statements(
    region: str, account_id: str, name: str, *, switch_market: bool = False, read_prices: bool = False
) -> list[dict]:
    """What a detached run's instance role needs beyond S3 (its prefixes are grants, see
    ec2.journey.detach): set its *own* group's desired capacity, no other group's, and tag it with
    the cause when its boot gives up (ec2.remote.giveup: S3 may be what failed). The group's ARN
    has a UUID we do not know before it exists: matched by name. The ARN's partition is the
    region's (aws-cn in China, aws-us-gov in GovCloud). The Sid stays clear of s3scope's own
    ("Spotrun..."), so reading the policy back never takes this statement for an S3 grant.
    https://docs.aws.amazon.com/autoscaling/ec2/userguide/control-access-using-iam.html

    A detached run with a budget (ec2.remote.spend) needs more, only then: ``switch_market``
    (on_demand_after, deadline) UpdateAutoScalingGroup on the same group, which the boot sends with
    the instances distribution only (no launch template named, so no ec2:RunInstances or
    iam:PassRole is checked); ``read_prices`` (max_cost_usd) DescribeSpotPriceHistory, read-only and
    without resource-level permissions, hence "*"
    (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html)."""
    group = group_name(name)
    partition = partition_of_region(region)
    group_arn = (
        f"arn:{partition}:autoscaling:{region}:{account_id}:autoScalingGroup:*:autoScalingGroupName/{group}"
    )
    actions = ["autoscaling:SetDesiredCapacity", "autoscaling:CreateOrUpdateTags"]
    if switch_market:
        actions.append("autoscaling:UpdateAutoScalingGroup")
    out = [{"Sid": "AutoScalingOwnGroup", "Effect": "Allow", "Action": actions, "Resource": [group_arn]}]
    if read_prices:
        out.append(
            {
                "Sid": "SpotPriceRead",
                "Effect": "Allow",
                "Action": ["ec2:DescribeSpotPriceHistory"],
                "Resource": "*",
            }
        )
    return out
