"""Launch one named instance: identity → region → AMI → key → security group → the cheapest
(type, zone) with capacity → running → SSH ready → registry and ~/.ssh config.

Stages are separate functions so each can be read and tested alone. Once an instance exists, any
failure terminates it (unless keep_on_failure) and says so: a failed launch leaves nothing billing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from datetime import UTC, datetime

import botocore.exceptions

from common import aws, guard
from common.aws import aws_errors, error_code, translate
from ec2 import names, registry
from ec2.cloud import account, iam, instances, keys, network, pricing, propagation, s3scope, volumes
from ec2.cloud.ami import Ami, resolve_ami
from ec2.cloud.capacity import CAPACITY_CODES, QUOTA_NEXT_STEP, Choice, offered_zones, plan, quota_next_step
from ec2.cloud.userdata import build_user_data
from ec2.config import AwsConfig
from ec2.errors import AwsError, CapacityError, QuotaError, ToolkitError
from ec2.registry import MachineRecord
from ec2.remote import mount, ready, sshconfig
from ec2.remote.ssh import Machine

RUNNING_DELAY_S = 3


def instance_tags(cfg: AwsConfig, name: str, owner: str, created: str) -> list[dict]:
    """User tags first, then spotrun's own (which the user cannot override: status relies on them)."""
    tags = dict(cfg.tags)
    tags.update(
        {"Name": name, instances.NAME_TAG: name, instances.OWNER_TAG: owner, instances.CREATED_TAG: created}
    )
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def profile_spec(configured: str | None, made: iam.Profile | None = None) -> dict | None:
    """RunInstances' IamInstanceProfile: the profile spotrun made (auto), the configured name or
    ARN, or none."""
    if made is not None:
        return {"Arn": made.arn}
    if not configured or configured == "auto":
        return None
    return {"Arn" if configured.startswith("arn:") else "Name": configured}


def instance_settings(
    cfg: AwsConfig,
    name: str,
    owner: str,
    ami: Ami,
    created: str,
    profile: iam.Profile | None = None,
    user_data: str | None = None,
) -> dict:
    """Every launch guarantee, in the shape run_instances and a launch template's data share: the
    AMI, the key, IMDSv2 only, an encrypted gp3 root deleted with the instance, shutdown that
    terminates, tags on the instance and its volume, the instance profile, and the user data
    (the cost guards unless given). `fab launch` and `fab run --detach` both build from this."""
    tags = instance_tags(cfg, name, owner, created)
    settings = {
        "ImageId": ami.image_id,
        "KeyName": cfg.key_name,
        "UserData": user_data or build_user_data(cfg.max_hours, cfg.idle_minutes, cfg.ssh_port),
        # IMDSv2 only: a stolen-request SSRF on the instance cannot read its role credentials.
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 2,
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": ami.root_device,
                "Ebs": {
                    "VolumeSize": cfg.root_volume_gb,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        # The max_hours and idle guards end in `shutdown`: that must terminate, not stop (a stopped
        # instance still bills for its volume, and spot one-time requests cannot be restarted).
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    spec = profile_spec(cfg.iam_instance_profile, profile)
    if spec:
        settings["IamInstanceProfile"] = spec
    return settings


def run_params(
    cfg: AwsConfig,
    name: str,
    owner: str,
    ami: Ami,
    group_id: str,
    choice: Choice,
    created: str,
    profile: iam.Profile | None = None,
) -> dict:
    """The run_instances request for one choice (a pure function: tests read it)."""
    params = {
        **instance_settings(cfg, name, owner, ami, created, profile),
        "InstanceType": choice.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
    }
    if cfg.subnet_id:
        params["NetworkInterfaces"] = [
            {
                "DeviceIndex": 0,
                "SubnetId": cfg.subnet_id,
                "Groups": [group_id],
                "AssociatePublicIpAddress": cfg.ssh_host == "public-ip",
            }
        ]
    else:
        params["SecurityGroupIds"] = [group_id]
        params["Placement"] = {"AvailabilityZone": choice.zone}
    if choice.market == "spot":
        spot = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if cfg.max_price is not None:
            spot["MaxPrice"] = f"{cfg.max_price:g}"
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
    return params


def _zones(ec2, cfg: AwsConfig) -> list[str]:
    """A configured subnet pins the zone; else the configured zones (empty: all)."""
    if not cfg.subnet_id:
        return list(cfg.zones)
    with aws_errors(f"looking up subnet {cfg.subnet_id}"):
        return [ec2.describe_subnets(SubnetIds=[cfg.subnet_id])["Subnets"][0]["AvailabilityZone"]]


def choices_for(ec2, cfg: AwsConfig, region: str, exclude=frozenset(), out=print) -> list[Choice]:
    """Offered (type, zone) pairs, cheapest current spot price first, or with choose_by: run_cost
    cheapest per step kept first (see capacity.plan)."""
    zones = _zones(ec2, cfg)
    offered = offered_zones(ec2, cfg.instance_types, zones)
    where = f"{region} ({', '.join(zones)})" if zones else region
    missing = [t for t in cfg.instance_types if not offered.get(t)]
    if len(missing) == len(cfg.instance_types):
        raise AwsError(
            f"none of {', '.join(cfg.instance_types)} is offered in {where}; check the type names "
            "(e.g. g5.xlarge) or pick another region or zones",
            "Unsupported",
        )
    for t in missing:
        out(f"note: {t} is not offered in {where}; skipped")
    prices = {}
    if cfg.market != "on-demand":
        prices = pricing.current_prices(pricing.spot_history(ec2, cfg.instance_types, zones=zones or None))
    on_demand = {}
    if cfg.market != "spot":
        on_demand = {t: pricing.on_demand_price(t, region, cfg.profile) for t in cfg.instance_types}
    by_run_cost = cfg.step_seconds if cfg.choose_by == "run_cost" else None
    choices = plan(cfg.instance_types, offered, prices, on_demand, cfg.market, exclude, by_run_cost)
    if not choices:
        raise CapacityError(
            f"no instance type and zone left to try in {where} after excluding "
            f"{', '.join(f'{t} in {z}' for t, z in sorted(exclude))}; add types or zones",
            "NoChoices",
        )
    return choices


def run_instance(ec2, params: dict, out=print, fresh_profile: bool = False) -> dict:
    """run_instances; with a ``fresh_profile`` (spotrun's own, maybe made seconds ago), retried
    while EC2 does not see it yet (ec2.cloud.propagation). A configured profile that does not
    exist fails at once."""
    if not fresh_profile:
        return ec2.run_instances(**params)
    spec = params.get("IamInstanceProfile", {})
    name = spec.get("Name") or spec.get("Arn", "").rsplit("/", 1)[-1]
    return propagation.retry_while_propagating(lambda: ec2.run_instances(**params), "EC2", name, out)


def try_choices(
    ec2,
    cfg: AwsConfig,
    choices: list[Choice],
    params_for: Callable[[Choice], dict],
    out=print,
    caller_arn: str = "",
    fresh_profile: bool = False,
) -> tuple[list[str], Choice]:
    """run_instances on each choice in order until one launches: (instance ids, choice).

    Capacity refusals move on; quota and price refusals stop (or, with spot-then-on-demand, skip
    the remaining spot choices); anything else stops with its AWS code."""
    refused: list[str] = []
    skip_spot = False
    for i, choice in enumerate(choices, 1):
        if skip_spot and choice.market == "spot":
            continue
        out(f"[{i}/{len(choices)}] trying {choice.describe()}")
        try:
            response = run_instance(ec2, params_for(choice), out, fresh_profile)
        except botocore.exceptions.ClientError as e:
            code = error_code(e)
            if code in iam.DENIED and "iam:PassRole" in e.response.get("Error", {}).get("Message", ""):
                raise iam.permission_error(e, caller_arn) from None
            if code in CAPACITY_CODES:
                out(f"      {code}: no capacity there; next choice")
                refused.append(code)
                continue
            if code in QUOTA_NEXT_STEP:
                if choice.market == "spot" and cfg.market == "spot-then-on-demand":
                    out(f"      {code}: spot refused for the account; falling back to on-demand")
                    skip_spot = True
                    continue
                step = quota_next_step(code, choice.instance_type, choice.market)
                message = f"launching {choice.describe()} refused: {step}"
                raise QuotaError(message, code) from None
            raise translate(e, f"launching {choice.describe()}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise translate(e, f"launching {choice.describe()}") from None
        return [i["InstanceId"] for i in response["Instances"]], choice
    codes = ", ".join(sorted(set(refused))) or "none tried"
    raise CapacityError(
        f"no capacity for {', '.join(cfg.instance_types)} after {len(refused)} attempt(s) ({codes}); "
        "retry in a few minutes, add instance types or zones, or set market: spot-then-on-demand",
        "InsufficientInstanceCapacity",
    )


def refuse_duplicate(ec2, name: str) -> None:
    live = instances.find_instances(ec2, name)
    if live:
        i = live[0]
        raise ToolkitError(
            f"an instance named {name!r} already exists ({i.instance_id}, {i.state}); terminate it with "
            f"`fab terminate --name {name}` or launch under another --name"
        )


def refuse_replacing(name: str, region: str | None = None) -> None:
    """A launch writes the name's record and SSH entry: an adopted machine's are not its to
    replace, nor (with ``region``) those of a launched instance in another region, which
    refuse_duplicate, asking this region only, cannot see. A record of this region whose
    instance is gone is stale: launch replaces it."""
    old = registry.load_all().get(name)
    if old is None:
        return
    if old.adopted:
        lost = f"adopted machine {old.user}@{old.host}:{old.port}'s record and SSH entry"
        instead = f"launch under another --name, or `fab forget --name {name}` first"
    elif region and old.region and old.region != region:
        lost = f"the record and SSH entry of {old.instance_id} in {old.region}"
        instead = (
            f"launch under another --name, or end that one first "
            f"(`fab terminate --name {name} --set region={old.region}`)"
        )
    else:
        return
    guard.unless_forced(
        False, target=f"launching {name!r}", lost=[lost], verb="replace", instead=instead, flag=None
    )


def register_found(record: MachineRecord) -> bool:
    """Register an instance found by its tag (a detached run's current instance, a run picked up
    again): its registry record and SSH entry, unless an adopted machine holds the name. That
    machine's entries are not replaced (False): the caller still reaches the instance through
    ``record``, only `ssh spotrun-NAME` keeps reaching the adopted machine."""
    old = registry.load_all().get(record.name)
    if old is not None and old.adopted:
        return False
    instances.forget_local(record.name)
    registry.put(record)
    sshconfig.write_entry(record)
    return True


def undo_profile(cfg: AwsConfig, region: str, profile: iam.Profile | None, failure: BaseException, out):
    """After a failed launch: the instance role and profile this launch made go again (one that
    was there before stays: another instance of the name, or the user, may use it). Returns the
    error to raise: ``failure``, or one that also says the role was kept when deleting it failed."""
    if profile is None or not profile.role_created:
        return failure
    try:
        iam.remove_made(aws.client("iam", region, cfg.profile), profile)
    except ToolkitError as e:
        return ToolkitError(
            f"{failure}; ALSO kept IAM role and instance profile {profile.role} this launch made "
            f"(could not delete them: {e}); `fab cleanup` deletes them"
        )
    out(f"removed instance role and profile {profile.role} (made for this launch)")
    return failure


def make_record(cfg: AwsConfig, info: instances.InstanceInfo, region: str, key_path: str) -> MachineRecord:
    host = info.address(cfg.ssh_host)
    if not host:
        raise ToolkitError(
            f"{info.instance_id} has no {cfg.ssh_host} address; launch in a public subnet, or set "
            "ssh_host: private-ip (VPN) or instance-id with an ssh_proxy_command (SSM)"
        )
    return MachineRecord(
        name=info.name,
        host=host,
        user=cfg.ssh_user,
        port=cfg.ssh_port,
        key_path=key_path,
        instance_id=info.instance_id,
        region=region,
        instance_type=info.instance_type,
        zone=info.zone,
        market=info.market,
        launched_at=info.launched_at.isoformat() if info.launched_at else None,
        proxy_command=cfg.ssh_proxy_command,
        remote_dir=cfg.remote_dir,
        private_ip=info.private_ip,
    )


def _bring_up(
    ec2, cfg: AwsConfig, instance_id: str, region: str, key_path: str, wait_ssh: bool, out
) -> MachineRecord:
    """From `pending` to a registered machine (and, with wait_ssh, an SSH server answering)."""
    out(f"waiting for {instance_id} to be running (up to {cfg.running_timeout_s:g} s)")
    instances.wait_for(
        ec2, "instance_running", [instance_id], delay_s=RUNNING_DELAY_S, budget_s=cfg.running_timeout_s
    )
    info = instances.describe_instance(ec2, instance_id)
    if info is None:
        raise AwsError(f"{instance_id} vanished right after launch; check the EC2 console", "InstanceGone")
    record = make_record(cfg, info, region, key_path)
    # A previous machine of this name is gone (launch refuses live duplicates): drop its traces, so
    # its host key in known_hosts cannot clash with the new one.
    instances.forget_local(record.name)
    registry.put(record)
    sshconfig.write_entry(record)
    out(
        f"{record.name} is running: {info.instance_id} {info.instance_type} in {info.zone} "
        f"({info.market}) at {record.host}"
    )
    if wait_ssh:
        ready.wait_ssh(record, cfg.ssh_ready_timeout_s, out=out)
    return record


def _bring_up_volume(ec2, cfg: AwsConfig, workspace, record: MachineRecord, owner: str, wait_ssh: bool, out):
    """Create (first launch) and attach the workspace volume; mount it once SSH answers."""
    vol = volumes.bring_up(ec2, cfg, workspace, record.instance_id, record.zone, owner, out)
    if wait_ssh:
        out(mount.mount_volume(Machine(record), vol.volume_id, cfg.volume_mount))
    else:
        out(
            f"volume {vol.name} attached, not mounted (SSH not waited for): "
            f"`fab volume-mount --name {record.name}`"
        )


def instance_profile(
    cfg: AwsConfig,
    name: str,
    region: str,
    owner: str,
    s3: Iterable[s3scope.Grant],
    out=print,
    extra: Iterable[dict] = (),
) -> iam.Profile | None:
    """With `iam_instance_profile: auto`, the role and profile for this machine, reaching exactly
    `s3_access` and the run's ``s3`` prefixes (plus ``extra`` policy statements, e.g. the one
    Auto Scaling group a detached run may resize)."""
    if cfg.iam_instance_profile != "auto":
        return None
    grants = [*s3scope.from_config(cfg.s3_access), *s3]
    client = aws.client("iam", region, cfg.profile)
    return iam.ensure_profile(client, name, region, owner, grants, extra, out=out)


@dataclass(frozen=True)
class Prepared:
    """Everything a launch needs before an instance exists (shared with `fab run --detach`)."""

    region: str
    owner: str
    ec2: object
    ami: Ami
    choices: list[Choice]
    key_path: str
    group_id: str
    created: str
    profile: iam.Profile | None
    cfg: AwsConfig  # pinned to the workspace volume's zone, when there is one
    workspace: object | None = None  # ec2.cloud.volumes' plan for the workspace volume


def prepare(
    cfg: AwsConfig,
    name: str,
    exclude: Set[tuple[str, str]] = frozenset(),
    s3: Iterable[s3scope.Grant] = (),
    extra: Callable[[str, str], Iterable[dict]] | None = None,
    out=print,
) -> Prepared:
    """identity → region → no live duplicate → AMI → workspace volume → choices → instance
    profile → key pair → security group. ``extra(region, account)``: more statements for the
    instance's role."""
    names.instance_name(name)
    region = account.resolve_region(cfg)
    owner = account.caller_arn(region, cfg.profile)  # first: bad credentials fail before anything exists
    ec2 = aws.client("ec2", region, cfg.profile)
    refuse_duplicate(ec2, name)
    refuse_replacing(name, region)
    ami = resolve_ami(cfg, ec2, aws.client("ssm", region, cfg.profile))
    out(f"AMI: {ami.image_id} {ami.name!r} ({ami.reason})")
    if ami.warning:
        out(f"warning: {ami.warning}")
    # Workspace volume: checked, and the launch pinned to its zone (a volume cannot cross zones).
    workspace = volumes.prepare(ec2, cfg, region, out) if cfg.volume_name else None
    if workspace:
        cfg = volumes.pin_zone(cfg, workspace, _zones(ec2, cfg)[0] if cfg.subnet_id else None)
    # Before the key pair and group exist: an unknown type or a bad CIDR then leaves nothing behind.
    choices = choices_for(ec2, cfg, region, exclude, out)
    cidr = network.ssh_cidr(cfg)
    statements = list(extra(region, iam.account_of(owner))) if extra else []
    profile = instance_profile(cfg, name, region, owner, s3, out, statements)
    try:
        key_path = keys.ensure_key_pair(ec2, cfg.key_name, owner, cfg.import_public_key)
        group_id = network.ensure_group(ec2, cfg, cidr, owner)
    except (ToolkitError, KeyboardInterrupt) as failure:
        raise undo_profile(cfg, region, profile, failure, out) from None
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Prepared(
        region, owner, ec2, ami, choices, str(key_path), group_id, created, profile, cfg, workspace
    )


def launch(
    cfg: AwsConfig,
    name: str,
    *,
    wait_ssh: bool = True,
    keep_on_failure: bool = False,
    exclude: Set[tuple[str, str]] = frozenset(),
    s3: Iterable[s3scope.Grant] = (),
    out=print,
) -> MachineRecord:
    """Launch the instance ``name`` and return its registry record (see the module docstring).

    ``s3``: the run's prefixes, granted to the instance's role beside `s3_access` (auto profile)."""
    p = prepare(cfg, name, exclude, s3, out=out)
    cfg, ec2, region, key_path, owner, profile = p.cfg, p.ec2, p.region, p.key_path, p.owner, p.profile
    ami, group_id, created, choices, workspace = p.ami, p.group_id, p.created, p.choices, p.workspace
    try:
        (instance_id,), choice = try_choices(
            ec2,
            cfg,
            choices,
            lambda c: run_params(cfg, name, owner, ami, group_id, c, created, profile),
            out,
            caller_arn=owner,
            # spotrun's own profile, made now or by a launch seconds ago: EC2 may not see it yet.
            fresh_profile=profile is not None,
        )
    except CapacityError as e:
        e = volumes.capacity_hint(e, workspace) if workspace else e
        raise undo_profile(cfg, region, profile, e, out) from None
    except (ToolkitError, KeyboardInterrupt) as failure:
        raise undo_profile(cfg, region, profile, failure, out) from None
    out(f"launched {instance_id}: {choice.describe()}")
    try:
        record = _bring_up(ec2, cfg, instance_id, region, str(key_path), wait_ssh, out)
        if cfg.volume_name:
            _bring_up_volume(ec2, cfg, workspace, record, owner, wait_ssh, out)
        return record
    except (ToolkitError, KeyboardInterrupt) as failure:
        if keep_on_failure:
            role = f" (and its instance role {profile.role})" if profile else ""
            out(
                f"launch failed; {instance_id} kept as asked (--keep-on-failure){role}: it bills until "
                f"you run `fab terminate --name {name}`"
            )
            raise
        out(f"launch failed after {instance_id} was created: terminating it so nothing is left billing")
        try:
            instances.terminate_instances(ec2, [instance_id], wait=False)
        except ToolkitError as e:
            raise ToolkitError(
                f"{failure}; ALSO could not terminate {instance_id} ({e}): terminate it in the EC2 console"
            ) from None
        instances.forget_local(name)
        out(f"terminated {instance_id}")
        raise undo_profile(cfg, region, profile, failure, out) from None
