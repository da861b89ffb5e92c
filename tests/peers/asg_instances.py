"""An Auto Scaling group's instances as DescribeInstances shows them on AWS, where moto's differ:

- a group whose mixed instances policy asks for no on-demand capacity (OnDemandBaseCapacity 0,
  OnDemandPercentageAboveBaseCapacity 0: "If set to 100, only On-Demand Instances are used", 0
  only Spot ones; https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_InstancesDistribution.html)
  launches spot instances, which DescribeInstances marks with InstanceLifecycle `spot`
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Instance.html); moto gives none;
- each instance has its InstanceType, one of the policy's overrides (moto, which "always picks
  the first entry" of a prioritized list, launches it with an empty type when the launch template
  names none, as spotrun's does).

`as_aws_shows` fills both into one client's parsed DescribeInstances responses, at the botocore
level."""

from __future__ import annotations


def _all_spot(group: dict) -> bool:
    dist = (group.get("MixedInstancesPolicy") or {}).get("InstancesDistribution")
    if dist is None:
        return False
    base = int(dist.get("OnDemandBaseCapacity", 0))
    above = int(dist.get("OnDemandPercentageAboveBaseCapacity", 100))
    return base == 0 and above == 0


def _first_type(group: dict) -> str | None:
    overrides = (group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate", {}).get("Overrides", [])
    return overrides[0].get("InstanceType") if overrides else None


def as_aws_shows(ec2, autoscaling) -> None:
    """``ec2``'s DescribeInstances answers: lifecycle and type of the groups' instances."""

    def after(parsed, **_):
        groups = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        spot = {i["InstanceId"] for g in groups if _all_spot(g) for i in g.get("Instances", [])}
        types = {i["InstanceId"]: _first_type(g) for g in groups for i in g.get("Instances", [])}
        for reservation in parsed.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                iid = instance["InstanceId"]
                if iid in spot:
                    instance["InstanceLifecycle"] = "spot"
                if not instance.get("InstanceType") and types.get(iid):
                    instance["InstanceType"] = types[iid]

    ec2.meta.events.register("after-call.ec2.DescribeInstances", after)
