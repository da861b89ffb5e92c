"""`fab run --detach --nodes N`: a cluster run handed to AWS, with no laptop watching.

The design, and why (docs/detached-nodes.md shows it at work):

- **One Auto Scaling group of one per node** (spotrun-NAME-0 .. spotrun-NAME-(N-1)), not one group
  of N. A member's rank is its identity: a replacement must take the lost member's place, and
  with one group per node it is fixed by the group's launch template (the user data starts
  `python -m ec2.remote.boot_nodes --node K`). In one group of N, every instance boots the same
  template, and a replacement would have to find out which rank is free, by a claim in S3 that
  races with a slow-dying predecessor. Each group replaces only its own instance; the others'
  instances stay and wait (ec2.remote.boot_nodes).
- **The rendezvous address is published per attempt in S3** (ec2.remote.detached_members): each
  boot writes its private address into nodes/attempt-k/join-K.json, and attempt k starts when all
  N joined; node 0's address of attempt k is torchrun's c10d endpoint. A replaced node 0 joins the
  next attempt with its new address; nobody reads an old one.
- **One zone, one instance type, for every member** (the cheapest choice, as `fab run --nodes N`
  picks): torchrun wants the same processes per node, and the members talk all the time.
  A **cluster placement group** (CreateAutoScalingGroup PlacementGroup, one for all N groups) is
  asked for only where the type has EFA, the fast network it exists for; elsewhere it would only
  narrow the capacity a spot replacement can come from. The members' own security group (every
  TCP port, members only, as ec2.cloud.cluster makes it) is in every template.
- **The stop**: a notice on one member reaches its ranks (the notice watcher with --ranks); the
  trainer's per-step all-reduced stop flag stops every rank at one step; rank 0 saves to S3; all
  exit 75. The noticed member's boot records `preempted` and leaves its group to AWS; the others'
  boots join the next attempt on their instances and wait for the replacement; then all resume
  from the S3 checkpoint together.
- **Failure rule**: a member whose trainer exits with anything but 0 or 75, whose setup fails, or
  a replacement that does not join within join_timeout_s, ends the run: every member's group to
  desired 0. A member lost with no notice (no clean stop at a step) makes the others' collective
  fail, and so fails the run too; its checkpoint stays in S3 for a new submit.

submit: needs checkpoint_dir in S3 → the same preparation as `fab run --detach` → the members'
security group (and placement group) → the bundle and the record → a template and group per node.
Anything half-made goes again on a failure. It returns once every group has launched an instance.
"""

from __future__ import annotations

from common import aws
from common.attempt import Outcome
from common.aws import aws_errors
from ec2.cloud import asg, bundle, cluster, launch, network
from ec2.cloud.spot_failures import spot_failure
from ec2.cloud.userdata import build_detached_user_data
from ec2.config import AwsConfig
from ec2.errors import ConfigError, ToolkitError
from ec2.journey import budget, decide, history, ledger, report
from ec2.journey.detach import Detached, Submitted, Where, grants, require_s3, run_record
from ec2.journey.stages import Plan
from ec2.remote import detached
from ec2.remote.detached import DetachedRun

# Group tags that make a member group: the run's name and the node number.
RUN_TAG = cluster.CLUSTER_TAG
NODE_TAG = cluster.NODE_TAG
# On the members' security group of a detached cluster (no laptop removes it at the end).
DETACHED_TAG = "spotrun:detached-cluster"
PLACEMENT_TAG = "spotrun:placement-group"  # on the same group: the placement group submit made


def member(name: str, node: int) -> str:
    return f"{name}-{int(node)}"


def role_statements(region: str, account: str, name: str, nodes: int) -> list[dict]:
    """Any member may set the desired capacity of every member's group (a failed or finished run
    stops them all) and tag them (a boot that gives up tags its own); no other group."""
    statements = [asg.instance_role_statements(region, account, member(name, k))[0] for k in range(nodes)]
    merged = dict(statements[0])
    merged["Resource"] = [r for s in statements for r in s["Resource"]]
    return [merged]


def member_template_data(data: dict, members_group: str, efa: bool) -> dict:
    """A member's launch template data: in the members' group too, and with an EFA interface where
    the type has one (as ec2.cloud.cluster.cluster_params does for RunInstances; a pure function).
    A template that defines network interfaces takes its security groups in them, not in
    SecurityGroupIds; the interface names no subnet: the group's VPCZoneIdentifier gives it.
    https://docs.aws.amazon.com/pcs/latest/userguide/working-with_networking_efa_create-lt.html
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start.html"""
    data = dict(data)
    if "NetworkInterfaces" not in data and not efa:
        data["SecurityGroupIds"] = [*data["SecurityGroupIds"], members_group]
        return data
    nic = dict(data["NetworkInterfaces"][0]) if "NetworkInterfaces" in data else {"DeviceIndex": 0}
    nic["Groups"] = [*nic.get("Groups", data.get("SecurityGroupIds", [])), members_group]
    if efa:
        nic["InterfaceType"] = "efa"
        nic.setdefault("AssociatePublicIpAddress", True)
        nic.setdefault("DeleteOnTermination", True)
    data.pop("SecurityGroupIds", None)
    data["NetworkInterfaces"] = [nic, *data.get("NetworkInterfaces", [])[1:]]
    return data


def member_tags(tags: list[dict], name: str, node: int) -> list[dict]:
    return [*tags, {"Key": RUN_TAG, "Value": name}, {"Key": NODE_TAG, "Value": str(int(node))}]


def refuse_budget(cfg: AwsConfig) -> None:
    """The budget keys are kept by a detached run of one instance (ec2.remote.spend), not yet by
    a detached cluster's boots: refused before anything is made, not run without them."""
    keys = [k for k in budget.KEYS if getattr(cfg, k) is not None]
    if keys:
        one = len(keys) == 1
        raise ConfigError(
            f"{', '.join(keys)} {'is' if one else 'are'} kept for a detached run on one instance, not yet "
            f"for a detached cluster (--detach --nodes); unset {'it' if one else 'them'} "
            f"(--set {keys[0]}=null) or run on one instance"
        )


def submit(
    cfg: AwsConfig,
    name: str,
    plan: Plan,
    nodes: int,
    *,
    rdzv_port: int,
    local_root=".",
    out=print,
    poll_s: float = 5.0,
) -> Submitted:
    if nodes < 2:
        raise ConfigError(f"--nodes {nodes}: a detached cluster has 2 or more nodes")
    checkpoint_dir = require_s3(plan)
    if cfg.volume_name:
        raise ConfigError(
            "detached runs cannot attach a workspace volume; unset volume_name (--set volume_name=null)"
        )
    if plan.train_config is None:
        raise ConfigError("a detached cluster runs the trainer (ml.train) on every node: give its config")
    refuse_budget(cfg)
    root = detached.root_for(checkpoint_dir, name)
    autoscaling = aws.client("autoscaling", aws.region_of(cfg.region, cfg.profile), cfg.profile)
    # A single detached run of the same name would shadow this one for `fab watch` and `fab stop`.
    for who in [name, *(member(name, k) for k in range(nodes))]:
        if (g := asg.describe_group(autoscaling, who)) is not None:
            raise ToolkitError(
                f"a detached run's group {g.name} exists; follow it with `fab watch --name {name}`, "
                f"or remove it with `fab terminate --name {name}`"
            )
    p = launch.prepare(
        cfg,
        name,
        s3=grants(plan, root, cfg.bundle_uri),
        extra=lambda region, account: role_statements(region, account, name, nodes),
        out=out,
    )
    try:
        return _submit(cfg, name, plan, nodes, rdzv_port, p, root, checkpoint_dir, local_root, out, poll_s)
    except (ToolkitError, KeyboardInterrupt) as failure:
        if any(asg.describe_group(autoscaling, member(name, k)) for k in range(nodes)):
            raise
        raise launch.undo_profile(cfg, p.region, p.profile, failure, out) from None


def _submit(cfg, name, plan, nodes, rdzv_port, p, root, checkpoint_dir, local_root, out, poll_s):
    autoscaling = aws.client("autoscaling", p.region, cfg.profile)
    s3 = aws.client("s3", p.region, cfg.profile)
    choice = p.choices[0]
    code = bundle.build(local_root)
    bundle_uri, uploaded = bundle.upload(s3, cfg.bundle_uri or root, code)
    out(f"code bundle: {bundle_uri} ({code.files} files{'' if uploaded else ', already there'})")
    state = run_record(
        cfg,
        plan,
        name,
        asg.group_name(member(name, 0)),
        p.region,
        root,
        checkpoint_dir,
        bundle_uri,
        nodes=nodes,
        rdzv_port=rdzv_port,
    )
    made: list[tuple[str, object]] = []

    def undo() -> None:
        for kind, what in reversed(made):
            try:
                if kind == "group":
                    asg.delete_group(autoscaling, what)
                elif kind == "template":
                    asg.delete_template(p.ec2, what)
                elif kind == "shared":
                    remove_shared_when_unused(cfg, p.region, name, out=out)
                elif kind == "state":
                    bundle.delete(s3, detached.state_uri(root))
            except ToolkitError as e:
                out(f"could not undo {kind} {what}: {e}")
        if uploaded:
            bundle.delete(s3, bundle_uri)

    try:
        detached.save(s3, state)
        made.append(("state", root))
        members_group = cluster.create_members_group(p.ec2, cfg, name, p.owner)
        made.append(("shared", name))
        # Marked as a detached cluster's: `fab cleanup` removes it once no member is live.
        p.ec2.create_tags(Resources=[members_group], Tags=[{"Key": DETACHED_TAG, "Value": name}])
        placement = None
        if cluster.efa_supported(p.ec2, choice.instance_type):
            cluster.allow_efa(p.ec2, members_group)
            placement = cluster.create_placement_group(p.ec2, name, p.owner)
            p.ec2.create_tags(Resources=[members_group], Tags=[{"Key": PLACEMENT_TAG, "Value": placement}])
        subnets = network.subnets_for_zones(p.ec2, cfg, [choice.zone])
        for k in range(nodes):
            who = member(name, k)
            user_data = build_detached_user_data(
                cfg.max_hours,
                cfg.idle_minutes,
                cfg.ssh_port,
                root=root,
                bundle_uri=bundle_uri,
                remote_dir=cfg.remote_dir,
                login_user=cfg.ssh_user,
                group=asg.group_name(who),
                region=p.region,
                node=k,
            )
            settings = launch.instance_settings(cfg, who, p.owner, p.ami, p.created, p.profile, user_data)
            tags = member_tags(launch.instance_tags(cfg, who, p.owner, p.created), name, k)
            # The instances carry the run and node too: `fab watch`, `fab status` and the
            # members' group's removal find the members by them (ec2.cloud.cluster.members).
            for spec in settings["TagSpecifications"]:
                spec["Tags"] = tags
            data = member_template_data(
                asg.template_data(settings, p.group_id), members_group, bool(placement)
            )
            asg.create_template(p.ec2, who, data, tags)
            made.append(("template", who))
            params = asg.group_params(
                who,
                asg.template_name(who),
                [choice.instance_type],
                subnets,
                cfg.market,
                cfg.max_price,
                tags,
                root,
            )
            if placement:
                params["PlacementGroup"] = placement
            asg.create_group(autoscaling, params, p.profile.name if p.profile else None, out)
            made.append(("group", who))
    except (ToolkitError, KeyboardInterrupt):
        undo()
        raise
    out(
        f"groups {', '.join(asg.group_name(member(name, k)) for k in range(nodes))}: {choice.instance_type} "
        f"in {choice.zone}{', cluster placement group' if placement else ''}, "
        f"{'on-demand' if cfg.market == 'on-demand' else 'spot'}, up to {state.max_attempts} attempt(s), "
        f"deadline {state.deadline.isoformat(timespec='minutes')}"
    )
    first = [
        asg.wait_first_instance(
            autoscaling,
            member(name, k),
            cfg.running_timeout_s,
            every_s=poll_s,
            out=out,
            on_failed=on_demand_switch(cfg, autoscaling, member(name, k), p.profile, out),
        )
        for k in range(nodes)
    ]
    out(f"launched {', '.join(first)}; the run goes on without this laptop")
    out(f"follow it: fab watch --name {name}   stop it: fab stop --name {name}")
    return Submitted(state, first[0])


def on_demand_switch(cfg: AwsConfig, autoscaling, who: str, profile, out):
    """As `fab run --detach` does for its group: with spot-then-on-demand, a member group's first
    documented spot failure while submit waits switches that group to on-demand, for good."""
    switched = []

    def on_failed(activity: dict) -> None:
        matched = spot_failure(activity)
        if cfg.market == "spot-then-on-demand" and not switched and matched:
            asg.use_on_demand(autoscaling, who, profile.name if profile else None, out)
            switched.append(True)
            out(f"spot failed for {asg.group_name(who)} ({matched}): it now launches on-demand")

    return on_failed


# --- the laptop side --------------------------------------------------------------------------------
def member_groups(autoscaling, name: str) -> list[asg.Group]:
    """The member groups of detached cluster `name` (by its run tag), node order; none: not a
    detached cluster. By tag, not by NAME-0, NAME-1...: a group removed half-way leaves the rest
    findable."""
    found = [g for g in asg.spotrun_groups(autoscaling, RUN_TAG) if g.tags.get(RUN_TAG) == name]
    return sorted(found, key=lambda g: int(g.tags.get(NODE_TAG, 0)))


class DetachedNodes(Detached):
    """A detached cluster seen from the laptop: its N groups act as one (desired is their sum)."""

    def groups(self) -> list[asg.Group]:
        return member_groups(self.asg, self.name)

    def root(self) -> str | None:
        if self._root is None:
            groups = self.groups()
            self._root = groups[0].tags.get(asg.ROOT_TAG) if groups else None
        return self._root

    def look(self) -> Where:
        groups = self.groups()
        root = self.root()
        state = detached.load(self.s3, root) if root else None
        live = [
            i
            for i in cluster.members(self.ec2, self.name)
            if i.state in ("pending", "running") and i.name == member(self.name, 0)
        ]
        group = None
        if groups:
            failures = [g.tags[asg.FAILURE_TAG] for g in groups if asg.FAILURE_TAG in g.tags]
            tags = dict(groups[0].tags)
            if failures:
                tags[asg.FAILURE_TAG] = "; ".join(failures)
            group = asg.Group(
                name=", ".join(g.name for g in groups),
                desired=sum(g.desired for g in groups),
                instance_ids=[i for g in groups for i in g.instance_ids],
                tags=tags,
                status=groups[0].status,
            )
        return Where(state, group, live[-1] if live else None)

    def history(self, state: DetachedRun) -> history.RunHistory:
        """The record as `fab run --nodes N`'s history: its attempts, and a member per instance
        (node K from the first attempt it served to the last; a survivor serves several), each
        member's cost from the spot price history."""
        h = super().history(state)
        h.nodes = state.nodes
        for a in h.attempts:
            self.note_steps(state, a)
        h.members = members_of(h.attempts, state.ended, state.nodes)
        for m in h.members:
            m.cost_usd = report.fetch_cost(self.ec2, m)
        return h

    def note_steps(self, state: DetachedRun, a) -> None:
        """The step each attempt stopped at and resumed from, from its members' logs in S3 (rank 0
        prints them, on whichever node c10d gave it)."""
        for k in range(state.nodes):
            uri = "s3://{}/{}".format(*detached.key_of(state.root, f"logs/attempt-{a.number}-node-{k}.log"))
            text = detached.get_ends(self.s3, uri) or ""
            decide_steps = decide.last_step(text), decide.resumed_step(text)
            if decide_steps[0] is not None and (a.last_step is None or decide_steps[0] > a.last_step):
                a.last_step = decide_steps[0]
            if decide_steps[1] is not None:
                a.resumed_step = decide_steps[1]

    def set_desired(self, desired: int) -> None:
        for g in self.groups():
            asg.set_desired(self.asg, g.name.removeprefix("spotrun-"), desired)


def members_of(attempts: list, ended: bool, nodes: int) -> list[history.Member]:
    """The instances that served the attempts, node order then time (a pure function)."""
    seen: dict[str, history.Member] = {}
    for a in attempts:
        for k, instance_id in enumerate(a.instance_ids):
            if not instance_id:
                continue
            m = seen.get(instance_id)
            if m is None:
                m = seen[instance_id] = history.Member(
                    node=k,
                    instance_id=instance_id,
                    instance_type=a.instance_type,
                    zone=a.zone,
                    market=a.market,
                    launched_at=a.launched_at,
                )
            m.ended_at = a.ended_at
            if k in a.nodes_lost:
                m.outcome = Outcome.LOST
            elif ended:
                m.outcome = Outcome.TERMINATED
    return sorted(seen.values(), key=lambda m: (m.node, m.launched_at or ""))


def find(cfg: AwsConfig, name: str) -> Detached:
    """The detached run `name`: a cluster when its node groups exist, else one group."""
    d = Detached(cfg, name)
    if asg.describe_group(d.asg, name) is None and member_groups(d.asg, name):
        return DetachedNodes(cfg, name)
    return d


def remove(cfg: AwsConfig, region: str, name: str, out=print) -> bool:
    """Delete a detached cluster's groups (their instances with them) and templates: True if
    there were any. Its members' and placement groups go once the instances are gone (`fab
    cleanup`, or here when AWS has already let them go)."""
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    ec2 = aws.client("ec2", region, cfg.profile)
    groups = member_groups(autoscaling, name)
    for g in groups:
        who = g.name.removeprefix("spotrun-")
        asg.delete_group(autoscaling, who)
        out(f"deleted Auto Scaling group {g.name} (its instance is terminated with it)")
        if asg.delete_template(ec2, who):
            out(f"deleted launch template {asg.template_name(who)}")
    return bool(groups)


def remove_shared_when_unused(cfg: AwsConfig, region: str, name: str, out=print) -> bool:
    """The members' and placement groups of detached cluster `name`, once no instance of it is
    live (AWS refuses to delete a group in use). True when removed."""
    ec2 = aws.client("ec2", region, cfg.profile)
    if live := cluster.members(ec2, name):
        out(
            f"detached cluster {name}'s members' security group stays while {len(live)} member(s) "
            "shut down; `fab cleanup` removes it afterwards"
        )
        return False
    try:
        group = network.find_group(ec2, cluster.members_group_name(cfg, name), network.vpc_id(ec2, cfg))
        tags = {t["Key"]: t["Value"] for t in (group or {}).get("Tags", [])}
        if tags.get(PLACEMENT_TAG):  # only where submit made one (EFA types)
            with aws_errors(
                f"deleting placement group {tags[PLACEMENT_TAG]}", tolerate={"InvalidPlacementGroup.Unknown"}
            ):
                ec2.delete_placement_group(GroupName=tags[PLACEMENT_TAG])
        if group is not None:
            with aws_errors(
                f"deleting security group {group['GroupId']}", tolerate={"InvalidGroup.NotFound"}
            ):
                ec2.delete_security_group(GroupId=group["GroupId"])
    except ToolkitError as e:  # an instance still shutting down holds the group: `fab cleanup` later
        out(f"kept detached cluster {name}'s members' security group for now: {e}")
        return False
    out(f"removed detached cluster {name}'s members' security group (and placement group)")
    return True


def leftover_shared(cfg: AwsConfig, region: str, out=print) -> None:
    """`fab cleanup`: the members' (and placement) groups of detached clusters whose groups are
    gone and whose instances are all terminated."""
    ec2 = aws.client("ec2", region, cfg.profile)
    autoscaling = aws.client("autoscaling", region, cfg.profile)
    found = ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": [DETACHED_TAG]}])
    for sg in found["SecurityGroups"]:
        name = {t["Key"]: t["Value"] for t in sg.get("Tags", [])}[DETACHED_TAG]
        if not member_groups(autoscaling, name):
            remove_shared_when_unused(cfg, region, name, out=out)


def status_lines(cfg: AwsConfig, groups: list[asg.Group]) -> list[str]:
    """`fab status`: one line per detached cluster among `groups` (its member groups together),
    then its ledger so far (ec2.journey.ledger: the members' cost cut into the attempts)."""
    names = sorted({g.tags[RUN_TAG] for g in groups if RUN_TAG in g.tags})
    out = []
    for name in names:
        d = DetachedNodes(cfg, name)
        where = d.look()
        if where.group is None:
            continue
        ids = ",".join(where.group.instance_ids) or "-"
        failed = (
            f", boot failed: {where.group.tags[asg.FAILURE_TAG]}"
            if asg.FAILURE_TAG in where.group.tags
            else ""
        )
        group = where.group
        head = f"detached run {name}: groups {group.name}, instances {ids}, desired {group.desired}"
        if where.state is None:
            out.append(f"{head}, no run record{failed}")
            continue
        s = where.state
        h = d.history(s)
        cost = f"${h.total_cost_usd:.4f}" if h.total_cost_usd is not None else "?"
        out.append(
            f"{head}, {s.nodes} nodes, attempt {len(s.attempts)} of {s.max_attempts}, {s.status}, "
            f"cost so far {cost}{failed}"
        )
        out += ledger.lines(h)
    return out
