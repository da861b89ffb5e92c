"""EC2's placement groups, which moto does not implement (CreatePlacementGroup is "not
implemented"): Create/Describe/DeletePlacementGroup are answered at the botocore level (a
before-call hook on the client the code uses) with the responses and error codes the EC2 API
reference documents, and RunInstances is refused for an unknown group as AWS refuses it
(InvalidPlacementGroup.Unknown); everything else is moto's server.
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreatePlacementGroup.html

Used by the cluster launch, cluster journey, policy and end-to-end cluster tests; the
`placement_groups` fixture installs it for one test.
"""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse

from common import aws
from ec2 import registry


class PlacementGroups:
    """Create/Describe/DeletePlacementGroup as documented (EC2 API reference), kept in a dict."""

    def __init__(self):
        self.groups: dict[str, dict] = {}
        self.calls: list[str] = []
        self.run_requests: list[dict] = []  # each RunInstances request as sent

    def _answer(self, status: int, parsed: dict):
        return AWSResponse("https://ec2.us-east-1.amazonaws.com/", status, {}, None), parsed

    def _error(self, code: str, message: str):
        return self._answer(400, {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}})

    def hook(self, model, params, **_):
        body, op = params["body"], model.name
        self.calls.append(op)
        name = body.get("GroupName") or body.get("GroupName.1")
        if op == "RunInstances":
            # moto keeps no placement group on its instances: check it exists as AWS does
            # (InvalidPlacementGroup.Unknown), note it, and let moto launch.
            group = body.get("Placement.GroupName")
            if group is not None and group not in self.groups:
                return self._error(
                    "InvalidPlacementGroup.Unknown", f"The Placement Group '{group}' is unknown."
                )
            self.run_requests.append(dict(body))
            return None
        if op == "CreatePlacementGroup":
            if name in self.groups:
                return self._error(
                    "InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists."
                )
            group = {
                "GroupName": name,
                "State": "available",
                "Strategy": body["Strategy"],
                "GroupId": f"pg-{len(self.calls):017x}",
            }
            self.groups[name] = group
            return self._answer(200, {"PlacementGroup": group})
        if op == "DescribePlacementGroups":
            names = [v for k, v in body.items() if k.startswith("GroupName.")]
            unknown = [n for n in names if n not in self.groups]
            if unknown:
                return self._error(
                    "InvalidPlacementGroup.Unknown", f"The Placement Group '{unknown[0]}' is unknown."
                )
            return self._answer(
                200, {"PlacementGroups": [g for n, g in self.groups.items() if not names or n in names]}
            )
        if op == "DeletePlacementGroup":
            if name not in self.groups:
                return self._error(
                    "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown."
                )
            del self.groups[name]
            return self._answer(200, {})
        return None


def install_placement_groups() -> PlacementGroups:
    """PlacementGroups answering on the client the code uses (us-east-1)."""
    groups = PlacementGroups()
    for op in ("CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup", "RunInstances"):
        aws.client("ec2", "us-east-1", None).meta.events.register(f"before-call.ec2.{op}", groups.hook)
    return groups


@pytest.fixture
def placement_groups(ec2_client):
    """EC2's placement group calls answered as documented (moto lacks them); yields the record."""
    return install_placement_groups()


def live_members(ec2):
    """The pending or running members of the cluster named job."""
    return [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag:spotrun:cluster", "Values": ["job"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]


def nothing_left(ec2, placement_groups):
    """No member, placement group, members' security group or registry entry of job is left."""
    assert live_members(ec2) == []
    assert placement_groups.groups == {}
    names = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert not [n for n in names if n.endswith("-job-members")]
    assert not [n for n in registry.load_all() if n.startswith("job")]
