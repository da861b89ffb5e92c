"""`fab launch --nodes N` against moto's server: N instances of one type in one zone, in a cluster
placement group, in a members-only security group (self-referencing, all TCP) beside the /32 SSH
group, all read back from AWS; and nothing left (instances, placement group, members' group,
registry) when the launch fails at any point. Capacity and quota refusals are injected on the
client (moto never runs out), as tests/peers/moto_ec2.py does.

moto does not implement placement groups (CreatePlacementGroup is "not implemented"), so the
`placement_groups` fixture (tests/peers/placement_groups.py) answers Create/Describe/
DeletePlacementGroup at the botocore level (a before-call hook on the client the code uses) with the
responses and error codes the EC2 API reference documents; everything else is moto's server."""

from __future__ import annotations

import pytest

from ec2 import registry
from ec2.cloud import cluster, instances
from ec2.errors import AwsError, CapacityError, ConfigError, ConnectionLost, QuotaError
from tests.peers.moto_ec2 import config
from tests.peers.placement_groups import live_members, nothing_left


def test_three_nodes_in_one_zone_in_a_cluster_group_reaching_only_each_other(
    home, ec2_client, placement_groups, dlami, capsys
):
    cfg = config("instance_types=[g5.12xlarge]", "zones=[us-east-1b]")
    records = cluster.launch_cluster(cfg, "job", 3, wait_ssh=False)
    assert [r.name for r in records] == ["job-0", "job-1", "job-2"]
    live = live_members(ec2_client)
    assert len(live) == 3
    assert {i["Placement"]["AvailabilityZone"] for i in live} == {"us-east-1b"}
    # One request for all three, in the group, with an EFA interface (g5.12xlarge: EfaSupported);
    # moto keeps neither the group nor the interface type, so they are read from the request (the
    # last one: the first may meet the new instance profile still propagating, and be retried).
    sent = placement_groups.run_requests[-1]
    assert (sent["MinCount"], sent["MaxCount"], sent["Placement.GroupName"]) == (3, 3, "spotrun-job")
    assert sent["NetworkInterface.1.InterfaceType"] == "efa"
    # With a network interface the subnet goes in it: the chosen zone's default subnet.
    (subnet,) = ec2_client.describe_subnets(
        Filters=[
            {"Name": "availability-zone", "Values": ["us-east-1b"]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"]
    assert sent["NetworkInterface.1.SubnetId"] == subnet["SubnetId"]
    assert "SubnetId" not in sent and "SecurityGroupId.1" not in sent
    assert {i["InstanceType"] for i in live} == {"g5.12xlarge"}
    assert placement_groups.groups["spotrun-job"]["Strategy"] == "cluster"
    # Each member: the SSH group (the caller's /32 only) and the members' group.
    by_name = {g["GroupName"]: g for g in ec2_client.describe_security_groups()["SecurityGroups"]}
    members = by_name[cluster.members_group_name(cfg, "job")]
    ssh = by_name[cfg.security_group_name]
    for i in live:
        (nic,) = i["NetworkInterfaces"]
        assert {g["GroupId"] for g in nic["Groups"]} == {members["GroupId"], ssh["GroupId"]}
    tcp = [p for p in members["IpPermissions"] if p["IpProtocol"] == "tcp"]
    assert len(tcp) == 1 and (tcp[0]["FromPort"], tcp[0]["ToPort"]) == (0, 65535)
    assert [pair["GroupId"] for pair in tcp[0]["UserIdGroupPairs"]] == [members["GroupId"]]
    assert all(not p.get("IpRanges") for p in members["IpPermissions"])  # nobody else
    # EFA: all traffic in from AND out to the members' own group (the default 0.0.0.0/0 outbound
    # rule does not count; EC2 user guide, "Prepare an EFA-enabled security group").
    for direction in ("IpPermissions", "IpPermissionsEgress"):
        everything = [p for p in members[direction] if p["IpProtocol"] == "-1"]
        assert members["GroupId"] in [g["GroupId"] for p in everything for g in p["UserIdGroupPairs"]]
    assert [r["CidrIp"] for p in ssh["IpPermissions"] for r in p["IpRanges"]] == ["203.0.113.7/32"]
    # Node order = names = tags; the private address is kept for the rendezvous.
    tags = {i["InstanceId"]: {t["Key"]: t["Value"] for t in i["Tags"]} for i in live}
    for node, r in enumerate(records):
        assert tags[r.instance_id]["spotrun:name"] == f"job-{node}"
        assert tags[r.instance_id]["spotrun:node"] == str(node)
        assert r.private_ip and registry.get(f"job-{node}").private_ip == r.private_ip


def test_efa_interface_where_the_type_has_one():
    base = {"SecurityGroupIds": ["sg-ssh"], "Placement": {"AvailabilityZone": "us-east-1a"}, "MinCount": 1}
    plain = cluster.cluster_params(base, 2, "spotrun-job", "sg-members", efa=False)
    assert plain["SecurityGroupIds"] == ["sg-ssh", "sg-members"] and (
        plain["MinCount"],
        plain["MaxCount"],
    ) == (2, 2)
    assert plain["Placement"] == {"AvailabilityZone": "us-east-1a", "GroupName": "spotrun-job"}
    efa = cluster.cluster_params(base, 2, "spotrun-job", "sg-members", efa=True)
    assert "SecurityGroupIds" not in efa
    assert efa["NetworkInterfaces"] == [
        {
            "DeviceIndex": 0,
            "Groups": ["sg-ssh", "sg-members"],
            "InterfaceType": "efa",
            "AssociatePublicIpAddress": True,
        }
    ]
    # The subnet (the zone's default one, when none is configured) rides in the interface.
    efa = cluster.cluster_params(base, 2, "spotrun-job", "sg-members", efa=True, subnet="subnet-1")
    assert efa["NetworkInterfaces"][0]["SubnetId"] == "subnet-1" and "SubnetId" not in efa


def test_efa_support_is_read_from_describe_instance_types(ec2_client):
    # moto's instance type data carries NetworkInfo.EfaSupported as AWS does.
    assert cluster.efa_supported(ec2_client, "p4d.24xlarge") is True
    assert cluster.efa_supported(ec2_client, "g4dn.xlarge") is False


def test_no_placement_capacity_in_the_first_zone_moves_on_then_none_anywhere_leaves_nothing(
    home, ec2_client, placement_groups, dlami, refusing, capsys
):
    wrapper = refusing(lambda a: None if a[1] == "us-east-1b" else "InsufficientInstanceCapacity")
    cfg = config("instance_types=[g5.12xlarge]", "zones=[us-east-1a, us-east-1b]")
    records = cluster.launch_cluster(cfg, "job", 2, wait_ssh=False)
    assert [a[1] for a in wrapper.attempts] == ["us-east-1a", "us-east-1b"]
    assert {r.zone for r in records} == {"us-east-1b"}
    for r in records:
        instances.terminate_instances(ec2_client, [r.instance_id])
        instances.forget_local(r.name)
    placement_groups.groups.clear()
    ec2_client.delete_security_group(GroupName=cluster.members_group_name(cfg, "job"))

    refusing(lambda a: "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError, match="no capacity for g5.12xlarge"):
        cluster.launch_cluster(cfg, "job", 2, wait_ssh=False)
    nothing_left(ec2_client, placement_groups)


def test_beyond_the_quota_is_one_error_and_nothing_left(home, ec2_client, placement_groups, dlami, refusing):
    refusing(lambda a: "VcpuLimitExceeded")
    with pytest.raises(QuotaError, match=r"\[VcpuLimitExceeded\]"):
        cluster.launch_cluster(
            config("instance_types=[p4d.24xlarge]", "zones=[us-east-1a]"), "job", 4, wait_ssh=False
        )
    nothing_left(ec2_client, placement_groups)


def test_a_member_that_never_runs_takes_the_whole_cluster_down(
    home, ec2_client, placement_groups, dlami, refusing, capsys
):
    # AWS accepted the request, then could not fill the last member's spot request: it goes from
    # pending to terminated. Injected by terminating it right after run_instances returns.
    wrapper = refusing(lambda a: None)
    real = wrapper.run_instances

    def run_then_lose_last(**params):
        response = real(**params)
        ec2_client.terminate_instances(InstanceIds=[response["Instances"][-1]["InstanceId"]])
        return response

    wrapper.run_instances = run_then_lose_last
    cfg = config("instance_types=[g5.12xlarge]", "zones=[us-east-1a]", "running_timeout_s=10")
    with pytest.raises(AwsError):
        cluster.launch_cluster(cfg, "job", 3, wait_ssh=False)
    assert "terminating" in capsys.readouterr().out
    nothing_left(ec2_client, placement_groups)


def test_a_member_never_reachable_takes_the_whole_cluster_down(
    home, ec2_client, placement_groups, dlami, capsys
):
    cfg = config("instance_types=[g5.12xlarge]", "ssh_proxy_command='true %h %p'", "ssh_ready_timeout_s=1")
    with pytest.raises(ConnectionLost):
        cluster.launch_cluster(cfg, "job", 2)
    nothing_left(ec2_client, placement_groups)


def test_one_node_is_not_a_cluster(home, ec2_client, placement_groups, dlami):
    with pytest.raises(ConfigError, match="2 or more nodes"):
        cluster.launch_cluster(config(), "job", 1, wait_ssh=False)


def test_fab_launch_nodes_then_fab_terminate_leaves_nothing(
    home, ec2_client, placement_groups, dlami, capsys
):
    from invoke import Context

    from tasks import lifecycle

    c = Context()
    sets = ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]", "instance_types=[g4dn.xlarge]"]
    lifecycle.launch(c, name="job", nodes=2, no_wait=True, set_=sets)
    assert "ready: job-0 job-1" in capsys.readouterr().out
    assert len(live_members(ec2_client)) == 2 and "spotrun-job" in placement_groups.groups
    lifecycle.terminate(c, name="job", yes=True, set_=sets)
    assert "removed cluster job's placement group" in capsys.readouterr().out
    nothing_left(ec2_client, placement_groups)


def test_a_lost_node_is_replaced_in_the_same_zone_and_placement_group(
    home, ec2_client, placement_groups, dlami, refusing, capsys
):
    cfg = config("instance_types=[g5.12xlarge]", "zones=[us-east-1a, us-east-1b]", "ssh_ready_timeout_s=1")
    records = cluster.launch_cluster(cfg, "job", 2, wait_ssh=False)
    lost = records[1]
    instances.terminate_instances(ec2_client, [lost.instance_id])  # the spot interruption
    # No capacity in that zone for the replacement: CapacityError, nothing new left running, the
    # cluster's shared parts kept for the caller's decision (relaunch all elsewhere).
    refuse = ["InsufficientInstanceCapacity"]
    refusing(lambda a: refuse[0])
    with pytest.raises(CapacityError):
        cluster.launch_replacement(cfg, "job", 1, records[0])
    assert [i["InstanceId"] for i in live_members(ec2_client)] == [records[0].instance_id]
    assert "spotrun-job" in placement_groups.groups
    # With capacity: same type, zone and placement group, named and tagged as node 1. (moto's
    # instances answer no SSH, so the wait fails and the replacement is terminated: that path too.)
    refuse[0] = None
    with pytest.raises(ConnectionLost):
        cluster.launch_replacement(
            config("instance_types=[g5.12xlarge]", "ssh_proxy_command='true %h %p'", "ssh_ready_timeout_s=1"),
            "job",
            1,
            records[0],
        )
    sent = placement_groups.run_requests[-1]
    assert (sent["MinCount"], sent["Placement.GroupName"], sent["Placement.AvailabilityZone"]) == (
        1,
        "spotrun-job",
        records[0].zone,
    )
    assert [i["InstanceId"] for i in live_members(ec2_client)] == [records[0].instance_id]
