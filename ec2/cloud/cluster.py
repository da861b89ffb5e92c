"""Several instances for one run (`fab launch --nodes N`): N instances of one type, in one zone, in
a cluster placement group (the fast network between them), with an EFA interface where the type
has one, and a security group of their own that lets members reach each other on every TCP port
(torchrun's rendezvous and NCCL pick ports freely) and nobody else. SSH stays as for one
instance: the tool's group, the caller's /32.

All N come from one run_instances request with MinCount = MaxCount = N, as AWS recommends for a
cluster placement group: AWS places all of them or none (InsufficientInstanceCapacity), and the
next (type, zone) choice is tried. Members are named NAME-0 .. NAME-(N-1) (tags spotrun:cluster,
spotrun:node); NAME-0 is node 0, whose private address is the rendezvous endpoint.

Nothing is left half-launched: when a member never runs (a spot request AWS could not fill after
all) or never answers SSH, every member is terminated, and the placement group and the members'
group are deleted, before the error is shown.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from common import aws
from common.aws import aws_errors
from ec2.cloud import account, instances, keys, network
from ec2.cloud.ami import resolve_ami
from ec2.cloud.capacity import Choice
from ec2.cloud.launch import (
    RUNNING_DELAY_S,
    choices_for,
    instance_profile,
    make_record,
    refuse_duplicate,
    refuse_replacing,
    run_params,
    try_choices,
    undo_profile,
)
from ec2.config import AwsConfig
from ec2.errors import AwsError, ConfigError, ToolkitError
from ec2.names import instance_name
from ec2.registry import MachineRecord
from ec2.remote import ready, sshconfig

CLUSTER_TAG = "spotrun:cluster"
NODE_TAG = "spotrun:node"
MEMBERS_RULE = "spotrun cluster members"


def member_names(name: str, nodes: int) -> list[str]:
    return [f"{name}-{k}" for k in range(nodes)]


def placement_group_name(name: str) -> str:
    return f"spotrun-{name}"


def members_group_name(cfg: AwsConfig, name: str) -> str:
    return f"{cfg.security_group_name}-{name}-members"


def efa_supported(ec2, instance_type: str) -> bool:
    """NetworkInfo.EfaSupported of describe_instance_types."""
    with aws_errors(f"describing {instance_type}"):
        found = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    return bool(found and found[0].get("NetworkInfo", {}).get("EfaSupported"))


def members_rules(group_id: str) -> list[dict]:
    """Every TCP port, from members of the same group only (a self-referencing rule)."""
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": 0,
            "ToPort": 65535,
            "UserIdGroupPairs": [{"GroupId": group_id, "Description": MEMBERS_RULE}],
        }
    ]


def efa_rules(group_id: str) -> list[dict]:
    """EFA's own traffic is not TCP: AWS asks for all traffic between the group's members, inbound
    AND outbound (the default outbound 0.0.0.0/0 rule does not count; NCCL over EFA hangs without
    it). EC2 user guide, "Prepare an EFA-enabled security group":
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start.html#efa-start-security"""
    return [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": MEMBERS_RULE}]}]


def allow_efa(ec2, group_id: str) -> None:
    """The members' group admits, and sends to, all traffic of its own members (efa_rules)."""
    with aws_errors("allowing EFA traffic between members", tolerate={"InvalidPermission.Duplicate"}):
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=efa_rules(group_id))
    with aws_errors("allowing EFA traffic out to members", tolerate={"InvalidPermission.Duplicate"}):
        ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=efa_rules(group_id))


def _tags(kind: str, name: str, owner: str) -> list[dict]:
    tags = {"Name": name, CLUSTER_TAG: name, "spotrun:managed": "true", instances.OWNER_TAG: owner}
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def create_members_group(ec2, cfg: AwsConfig, name: str, owner: str) -> str:
    vpc = network.vpc_id(ec2, cfg)
    group_name = members_group_name(cfg, name)
    with aws_errors(f"creating security group {group_name!r}"):
        group_id = ec2.create_security_group(
            GroupName=group_name,
            Description=f"spotrun: members of cluster {name} reach each other",
            VpcId=vpc,
            TagSpecifications=_tags("security-group", name, owner),
        )["GroupId"]
    with aws_errors(f"allowing cluster {name}'s members to reach each other"):
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=members_rules(group_id))
    return group_id


def create_placement_group(ec2, name: str, owner: str) -> str:
    group = placement_group_name(name)
    with aws_errors(f"creating placement group {group!r}"):
        ec2.create_placement_group(
            GroupName=group, Strategy="cluster", TagSpecifications=_tags("placement-group", name, owner)
        )
    return group


def cluster_params(
    base: dict, nodes: int, placement: str, members_group: str, efa: bool, subnet: str | None = None
) -> dict:
    """A one-instance run_instances request made into the cluster's: N at once, in the placement
    group, in the members' group too, with an EFA interface where the type has one (a pure function).
    With a network interface, RunInstances takes the subnet in the interface only: ``subnet`` (the
    chosen zone's default subnet) goes there when the base request names none.
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html"""
    params = {**base, "MinCount": nodes, "MaxCount": nodes}
    params["Placement"] = {**base.get("Placement", {}), "GroupName": placement}
    if "NetworkInterfaces" in base or efa:
        nic = dict(base["NetworkInterfaces"][0]) if "NetworkInterfaces" in base else {"DeviceIndex": 0}
        nic["Groups"] = [*nic.get("Groups", base.get("SecurityGroupIds", [])), members_group]
        if efa:
            nic["InterfaceType"] = "efa"
            nic.setdefault("AssociatePublicIpAddress", True)
        if "SubnetId" not in nic and subnet:
            nic["SubnetId"] = subnet
        params.pop("SecurityGroupIds", None)
        params["NetworkInterfaces"] = [nic]
    else:
        params["SecurityGroupIds"] = [*base["SecurityGroupIds"], members_group]
    return params


def launch_cluster(
    cfg: AwsConfig,
    name: str,
    nodes: int,
    *,
    wait_ssh: bool = True,
    exclude=frozenset(),
    s3=(),
    out=print,
) -> list[MachineRecord]:
    """Launch the N members of cluster `name`; their registry records, node 0 first."""
    if nodes < 2:
        raise ConfigError(f"--nodes {nodes}: a cluster has 2 or more nodes (one node: leave --nodes out)")
    instance_name(name)
    region = account.resolve_region(cfg)
    owner = account.caller_arn(region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    names = member_names(name, nodes)
    for member in [name, *names]:
        refuse_duplicate(ec2, member)
        refuse_replacing(member, region)  # each member gets a record and SSH entry of its own
    ami = resolve_ami(cfg, ec2, aws.client("ssm", region, cfg.profile))
    out(f"AMI: {ami.image_id} {ami.name!r} ({ami.reason})")
    choices = choices_for(ec2, cfg, region, exclude, out)
    cidr = network.ssh_cidr(cfg)
    key_path = keys.ensure_key_pair(ec2, cfg.key_name, owner, cfg.import_public_key)
    profile = instance_profile(cfg, name, region, owner, s3, out)  # one role for every member
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    made = Made(ec2, name, names, out)
    try:
        ssh_group = network.ensure_group(ec2, cfg, cidr, owner)
        made.members_group = create_members_group(ec2, cfg, name, owner)
        made.placement = create_placement_group(ec2, name, owner)
        efa = {t: efa_supported(ec2, t) for t in {c.instance_type for c in choices}}
        if any(efa.values()):
            allow_efa(ec2, made.members_group)
        subnets: dict[str, str] = {}  # zone → its default subnet, for an EFA interface

        def params_for(choice):
            base = run_params(cfg, name, owner, ami, ssh_group, choice, created, profile)
            base["TagSpecifications"] = [
                {**spec, "Tags": [*spec["Tags"], {"Key": CLUSTER_TAG, "Value": name}]}
                for spec in base["TagSpecifications"]
            ]
            efa_here = efa[choice.instance_type]
            subnet = None
            if efa_here and not cfg.subnet_id:
                if choice.zone not in subnets:
                    subnets[choice.zone] = network.subnets_for_zones(ec2, cfg, [choice.zone])[0]
                subnet = subnets[choice.zone]
            return cluster_params(base, nodes, made.placement, made.members_group, efa_here, subnet)

        out(f"launching {nodes} instances in one zone, in placement group {placement_group_name(name)}")
        made.ids, choice = try_choices(
            ec2,
            cfg,
            choices,
            params_for,
            out,
            caller_arn=owner,
            fresh_profile=profile is not None,  # spotrun's own: EC2 may not see it yet
        )
        out(
            f"launched {', '.join(made.ids)}: {choice.describe()}"
            + (" with EFA" if efa[choice.instance_type] else "")
        )
        return _bring_up(cfg, made, region, str(key_path), wait_ssh)
    except (ToolkitError, KeyboardInterrupt) as failure:
        made.undo()  # raises (and the role stays, held) when the members could not be terminated
        raise undo_profile(cfg, region, profile, failure, out) from None


class Made:
    """What a cluster launch has created so far, and how to take it all back."""

    def __init__(self, ec2, name: str, names: list[str], out):
        self.ec2, self.name, self.names, self.out = ec2, name, names, out
        self.ids: list[str] = []
        self.placement: str | None = None
        self.members_group: str | None = None

    def undo(self) -> None:
        problems = []
        if self.ids:
            self.out(f"cluster launch failed: terminating {', '.join(self.ids)} so nothing is left billing")
            try:
                # Waited for: AWS refuses to delete a group or placement group still in use.
                instances.terminate_instances(self.ec2, self.ids, wait=True)
            except ToolkitError as e:
                problems.append(f"could not terminate {', '.join(self.ids)} ({e})")
        for member in self.names:
            instances.forget_local(member)
        if self.placement and not problems:
            with aws_errors(
                f"deleting placement group {self.placement}", tolerate={"InvalidPlacementGroup.Unknown"}
            ):
                self.ec2.delete_placement_group(GroupName=self.placement)
        if self.members_group and not problems:
            with aws_errors(
                f"deleting security group {self.members_group}", tolerate={"InvalidGroup.NotFound"}
            ):
                self.ec2.delete_security_group(GroupId=self.members_group)
        if problems:
            raise ToolkitError("; ".join(problems) + ": terminate them in the EC2 console")
        removed = " and removed its placement group and members' group" if self.placement else ""
        self.out(f"terminated {', '.join(self.ids) or 'nothing (none had started)'}{removed}")


def _bring_up(
    cfg: AwsConfig, made: Made, region: str, key_path: str, wait_ssh: bool, first_node: int = 0
) -> list[MachineRecord]:
    """All members running, named NAME-K by launch order, registered, and (wait_ssh) answering SSH."""
    ec2, out = made.ec2, made.out
    out(f"waiting for {len(made.ids)} instances to be running (up to {cfg.running_timeout_s:g} s)")
    instances.wait_for(
        ec2, "instance_running", made.ids, delay_s=RUNNING_DELAY_S, budget_s=cfg.running_timeout_s
    )
    records = []
    for node, (iid, member) in enumerate(zip(made.ids, made.names, strict=True), first_node):
        with aws_errors(f"naming {iid} {member}"):
            ec2.create_tags(
                Resources=[iid],
                Tags=[
                    {"Key": "Name", "Value": member},
                    {"Key": instances.NAME_TAG, "Value": member},
                    {"Key": NODE_TAG, "Value": str(node)},
                ],
            )
        info = instances.describe_instance(ec2, iid)
        if info is None or info.state != "running":
            raise AwsError(f"{iid} ({member}) is not running; check the EC2 console", "InstanceGone")
        record = make_record(cfg, info, region, key_path)
        instances.forget_local(member)
        from ec2 import registry

        registry.put(record)
        sshconfig.write_entry(record)
        records.append(record)
    zones = {r.zone for r in records}
    if len(zones) > 1:
        raise AwsError(
            f"the cluster's members landed in {', '.join(sorted(zones))}, not one zone", "SplitZones"
        )
    out(f"cluster {made.name}: {', '.join(f'{r.name} {r.instance_id} {r.private_ip}' for r in records)}")
    if wait_ssh:
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            list(pool.map(lambda r: ready.wait_ssh(r, cfg.ssh_ready_timeout_s, out=out), records))
    return records


def members(ec2, name: str) -> list[instances.InstanceInfo]:
    """The live members of cluster `name` (by tag), node 0 first."""
    found = [i for i in instances.find_instances(ec2) if i.tag(CLUSTER_TAG) == name]
    return sorted(found, key=lambda i: int(i.tag(NODE_TAG) or 0))


def remove_shared(ec2, cfg: AwsConfig, name: str) -> None:
    """The placement group and members' group of cluster `name`, once its instances are terminated."""
    with aws_errors(
        f"deleting placement group {placement_group_name(name)}", tolerate={"InvalidPlacementGroup.Unknown"}
    ):
        ec2.delete_placement_group(GroupName=placement_group_name(name))
    group = network.find_group(ec2, members_group_name(cfg, name), network.vpc_id(ec2, cfg))
    if group is not None:
        with aws_errors(f"deleting security group {group['GroupId']}", tolerate={"InvalidGroup.NotFound"}):
            ec2.delete_security_group(GroupId=group["GroupId"])


def launch_replacement(
    cfg: AwsConfig, name: str, node: int, survivor: MachineRecord, out=print
) -> MachineRecord:
    """One new member for node `node` of cluster `name` after a spot interruption: the survivors'
    type and zone, the same placement group and members' group, so the cluster keeps its fast
    network. No capacity there raises CapacityError: the caller then relaunches the whole cluster
    elsewhere (a cluster placement group cannot span zones). A replacement that never runs or never
    answers SSH is terminated before the error is shown."""
    region = survivor.region or account.resolve_region(cfg)
    owner = account.caller_arn(region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    member = member_names(name, node + 1)[node]
    ami = resolve_ami(cfg, ec2, aws.client("ssm", region, cfg.profile))
    ssh_group = network.ensure_group(ec2, cfg, network.ssh_cidr(cfg), owner)
    group = network.find_group(ec2, members_group_name(cfg, name), network.vpc_id(ec2, cfg))
    if group is None:
        raise ToolkitError(
            f"cluster {name} has no members' security group; relaunch it with `fab launch --nodes`"
        )
    choice = Choice(survivor.instance_type, survivor.zone, survivor.market or "spot", None)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    profile = instance_profile(cfg, name, region, owner, (), out)  # the cluster's role
    base = run_params(cfg, member, owner, ami, ssh_group, choice, created, profile)
    base["TagSpecifications"] = [
        {
            **spec,
            "Tags": [
                *spec["Tags"],
                {"Key": CLUSTER_TAG, "Value": name},
                {"Key": NODE_TAG, "Value": str(node)},
            ],
        }
        for spec in base["TagSpecifications"]
    ]
    efa = efa_supported(ec2, choice.instance_type)
    subnet = network.subnets_for_zones(ec2, cfg, [choice.zone])[0] if efa and not cfg.subnet_id else None
    params = cluster_params(base, 1, placement_group_name(name), group["GroupId"], efa, subnet)
    out(f"replacing node {node} of {name}: {choice.describe()}, placement group {placement_group_name(name)}")
    made = Made(ec2, name, [member], out)
    made.ids, _ = try_choices(
        ec2, cfg, [choice], lambda c: params, out, caller_arn=owner, fresh_profile=profile is not None
    )
    try:
        records = _bring_up(cfg, made, region, survivor.key_path, wait_ssh=True, first_node=node)
    except (ToolkitError, KeyboardInterrupt):
        made.undo()  # only the replacement: the placement group and members' group are the cluster's
        raise
    return records[0]
