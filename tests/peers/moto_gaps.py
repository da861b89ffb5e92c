"""Requests AWS documents as valid that moto's server fails: the gate (tests/peers/aws_gate.py)
completes them from moto's own state before forwarding, the way AWS reads them.

- UpdateAutoScalingGroup with a MixedInstancesPolicy that names no LaunchTemplate (the detached
  boot's switch to on-demand, ec2.remote.spend): AWS keeps the group's launch template and
  overrides ("LaunchTemplate ... not required when updating the group",
  https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_MixedInstancesPolicy.html); moto
  replaces the policy whole and fails on the missing part (KeyError 'LaunchTemplate'). The group's
  current LaunchTemplate part is added to the request.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tests.peers.aws_rules import Call

_LT = "MixedInstancesPolicy.LaunchTemplate"


def complete(call: Call, body: bytes) -> bytes:
    if call.service != "autoscaling" or call.action != "UpdateAutoScalingGroup":
        return body
    mixed = call.params.get("MixedInstancesPolicy")
    if not isinstance(mixed, dict) or mixed.get("LaunchTemplate"):
        return body
    groups = call.moto("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[call.params.get("AutoScalingGroupName", "")]
    )["AutoScalingGroups"]
    current = groups[0].get("MixedInstancesPolicy") if groups else None
    if not current:
        return body  # a group without a mixed instances policy: AWS decides, moto fails as it does
    template = current["LaunchTemplate"]
    spec = template["LaunchTemplateSpecification"]
    extra = [
        (f"{_LT}.LaunchTemplateSpecification.LaunchTemplateName", spec["LaunchTemplateName"]),
        (f"{_LT}.LaunchTemplateSpecification.Version", spec.get("Version") or "$Default"),
    ]
    for i, o in enumerate(template.get("Overrides", []), 1):
        extra.append((f"{_LT}.Overrides.member.{i}.InstanceType", o["InstanceType"]))
    return body + b"&" + urlencode(extra).encode()
