"""`fab run --detach`: hand a run to an Auto Scaling group of one, and the laptop side of it
(watch, stop, terminate, the summary).

submit: needs checkpoint_dir in S3 (the laptop may be gone), checks the budget keys (the boot keeps
them: ec2.remote.spend) → the same preparation as `fab launch`
(identity, AMI, choices, key, security group) → the code bundle in S3 → the run's record in S3 →
launch template + group. A group whose creation fails takes its template, bundle and record away
again. It returns once the group has launched its first instance: it waits for neither SSH nor the
run, since the laptop may go away right after.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common import aws
from common.checks import DETACHED, require_s3_checkpoints
from common.s3uri import is_s3
from ec2 import paths, registry
from ec2.cloud import asg, bundle, instances, keys, launch, network, pricing, runcost, s3scope
from ec2.cloud.spot_failures import spot_failure
from ec2.cloud.userdata import build_detached_user_data
from ec2.config import AwsConfig
from ec2.errors import ConfigError, ToolkitError
from ec2.journey import budget, history, interruptions, ledger, report, standing
from ec2.journey.stages import Plan, watcher_args
from ec2.remote import detached, detached_members, runs
from ec2.remote.detached import DetachedRun
from ec2.remote.ssh import Machine

Say = Callable[[str], None]


# Kept a refusal, by decision (docs/detached.md, "The workspace volume"): an EBS
# volume stays in its Availability Zone and, not being io1/io2 Multi-Attach, attaches to one
# instance at a time (AttachVolume: "The volume and instance must be within the same Availability
# Zone", https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AttachVolume.html; Multi-Attach:
# https://docs.aws.amazon.com/ebs/latest/userguide/ebs-volumes-multi.html). The group would be
# pinned to one zone (its spot capacity elsewhere given up), its role widened to attach volumes,
# and each replacement would wait for the lost instance to let go; a detached run already keeps
# what outlives an instance in S3 (checkpoints required there, the code bundle, logs, outputs).
VOLUME_REFUSAL = (
    "detached runs do not use a workspace volume: an EBS volume stays in one Availability Zone and "
    "attaches to one instance at a time, so the group could not look for spot capacity in other zones "
    "and each replacement would wait for the lost instance to let go of it; keep what must outlive the "
    "instances in S3, or leave out --detach to use the volume (--set volume_name=null unsets it)"
)


def require_s3(plan: Plan) -> str:
    return require_s3_checkpoints(plan.checkpoint_dir, DETACHED)


def grants(plan: Plan, root: str, bundle_uri: str | None) -> list[s3scope.Grant]:
    """The S3 the instance role reaches (iam_instance_profile: auto): the run's own prefixes (data
    read, checkpoints written), its root (record, bundle, logs, outputs) and a separate bundle_uri."""
    out = [
        *plan.s3,
        *s3scope.for_run(None, plan.checkpoint_dir, None),
        s3scope.grant(root, s3scope.WRITE, "checkpoint_dir"),
    ]
    if bundle_uri:
        out.append(s3scope.grant(bundle_uri, s3scope.READ, "bundle_uri"))
    return out


def _unique(items) -> list:
    return list(dict.fromkeys(items))


@dataclass
class Submitted:
    state: DetachedRun
    instance_id: str


def submit(
    cfg: AwsConfig,
    name: str,
    plan: Plan,
    *,
    local_root: str | Path = ".",
    instance_profile: str | None = None,
    out: Say = print,
    poll_s: float = 5.0,
) -> Submitted:
    checkpoint_dir = require_s3(plan)
    if cfg.volume_name:
        raise ConfigError(VOLUME_REFUSAL)
    steps = budget_steps(cfg, plan)
    root = detached.root_for(checkpoint_dir, name)
    if instance_profile:
        cfg = dataclasses.replace(cfg, iam_instance_profile=instance_profile)
    p = launch.prepare(
        cfg,
        name,
        s3=grants(plan, root, cfg.bundle_uri),
        extra=lambda region, account: asg.instance_role_statements(
            region,
            account,
            name,
            switch_market=cfg.on_demand_after is not None or cfg.deadline is not None,
            read_prices=cfg.max_cost_usd is not None,
        ),
        out=out,
    )
    try:
        return _submit(cfg, name, plan, p, root, checkpoint_dir, local_root, out, poll_s, steps)
    except (ToolkitError, KeyboardInterrupt) as failure:
        # Before the group exists, nothing uses a role this call made: it goes again. Once the
        # group exists it launches with that role, and _submit raises from its waiting only.
        if _group_made(cfg, p.region, name):
            raise
        raise launch.undo_profile(cfg, p.region, p.profile, failure, out) from None


def _group_made(cfg: AwsConfig, region: str, name: str) -> bool:
    try:
        return asg.describe_group(aws.client("autoscaling", region, cfg.profile), name) is not None
    except ToolkitError:
        return True  # cannot tell: the role stays (`fab cleanup` removes it once nothing uses it)


def budget_steps(cfg: AwsConfig, plan: Plan) -> tuple[int, int] | None:
    """The budget keys checked before anything is made: (the trainer's steps, its steps between
    saves) when the deadline needs them for its projection (the boot reads no train config)."""
    if cfg.deadline is None:
        return None
    if plan.train_config is None:
        raise ConfigError(
            "deadline needs the run's steps to project its finish: give --train-config (its "
            "num_training_batches), or unset it (--set deadline=null)"
        )
    if budget.parse_time(cfg.deadline) <= datetime.now(timezone.utc):
        raise ConfigError(f"deadline {cfg.deadline} has passed; set a later one (--set deadline=...)")
    from ml.config import load_train_config

    t = load_train_config(plan.train_config, list(plan.overrides))
    return t.num_training_batches, runcost.checkpoint_interval(t.batches_per_save, t.batches_per_val_step)


def budget_fields(cfg: AwsConfig, region: str, types: list[str], steps, outputs: Path) -> dict:
    """What the boot keeps the budget with (ec2.remote.spend), resolved here once: the on-demand
    $/h of the group's types (the instance role has no Pricing API grant) and, for the deadline's
    projection, the steps and the interruptions this user's run records show."""
    if cfg.on_demand_after is None and cfg.max_cost_usd is None and cfg.deadline is None:
        return {}
    prices = {t: pricing.on_demand_price(t, region, cfg.profile) for t in types}
    fields = {
        "on_demand_after": cfg.on_demand_after,
        "max_cost_usd": cfg.max_cost_usd,
        "finish_by": cfg.deadline,
        "on_demand_usd": {t: usd for t, usd in prices.items() if usd is not None},
        "prioritized": cfg.choose_by == "run_cost",
    }
    if steps is not None:
        rate = interruptions.for_type(interruptions.observed(outputs), types[0])
        fields |= {
            "total_steps": steps[0],
            "checkpoint_every": steps[1],
            "interruptions_per_hour": rate.per_hour,
            "recovery_s": rate.recovery_s,
        }
    return fields


def run_record(cfg, plan: Plan, name, group, region, root, checkpoint_dir, bundle_uri, **more) -> DetachedRun:
    """The S3 record a detached run starts with (one group, or a detached cluster's with `more`)."""
    return DetachedRun(
        name=name,
        group=group,
        region=region,
        root=root,
        command=plan.command,
        run=plan.run,
        train_config=plan.train_config,
        overrides=list(plan.overrides),
        gpus=plan.gpus,
        env=dict(plan.env),
        watcher_args=watcher_args(plan, None),
        output_dir=plan.output_dir,
        checkpoint_dir=checkpoint_dir,
        remote_dir=cfg.remote_dir,
        login_user=cfg.ssh_user,
        setup_python=plan.setup_python,
        require_gpu=plan.require_gpu,
        max_recoveries=plan.max_recoveries,
        max_hours=cfg.max_hours,
        bundle_uri=bundle_uri,
        **more,
    )


def _submit(cfg, name, plan, p, root, checkpoint_dir, local_root, out, poll_s, steps=None) -> Submitted:
    """submit's second half, once the role, key pair and security group exist."""
    autoscaling = aws.client("autoscaling", p.region, cfg.profile)
    if (existing := asg.describe_group(autoscaling, name)) is not None:
        raise ToolkitError(
            f"a detached run named {name!r} exists (group {existing.name}); follow it with "
            f"`fab watch --name {name}`, or remove it with `fab terminate --name {name}`"
        )
    s3 = aws.client("s3", p.region, cfg.profile)
    code = bundle.build(local_root)
    bundle_uri, uploaded = bundle.upload(s3, cfg.bundle_uri or root, code)
    out(f"code bundle: {bundle_uri} ({code.files} files{'' if uploaded else ', already there'})")
    types = _unique(c.instance_type for c in p.choices)
    state = run_record(
        cfg,
        plan,
        name,
        asg.group_name(name),
        p.region,
        root,
        checkpoint_dir,
        bundle_uri,
        on_demand=cfg.market == "on-demand",
        **budget_fields(cfg, p.region, types, steps, paths.outputs_dir(name).parent),
    )
    created: list[str] = []

    def undo() -> None:
        # Nothing half-created: the template, the bundle we uploaded and the record go again.
        if "group" in created:
            asg.delete_group(autoscaling, name)
        if "template" in created:
            asg.delete_template(p.ec2, name)
        if uploaded:
            bundle.delete(s3, bundle_uri)
        if "state" in created:
            bundle.delete(s3, detached.state_uri(root))

    try:
        detached.save(s3, state)
        created.append("state")
        zones = _unique(c.zone for c in p.choices)
        subnets = network.subnets_for_zones(p.ec2, cfg, zones)
        user_data = build_detached_user_data(
            cfg.max_hours,
            cfg.idle_minutes,
            cfg.ssh_port,
            root=root,
            bundle_uri=bundle_uri,
            remote_dir=cfg.remote_dir,
            login_user=cfg.ssh_user,
            group=state.group,
            region=p.region,
        )
        settings = launch.instance_settings(cfg, name, p.owner, p.ami, p.created, p.profile, user_data)
        tags = launch.instance_tags(cfg, name, p.owner, p.created)
        asg.create_template(p.ec2, name, asg.template_data(settings, p.group_id), tags)
        created.append("template")
        params = asg.group_params(
            name,
            asg.template_name(name),
            types,  # in launch order: by price, or by run cost (choose_by)
            subnets,
            cfg.market,
            cfg.max_price,
            tags,
            root,
            prioritized=cfg.choose_by == "run_cost",
        )
        asg.create_group(autoscaling, params, p.profile.name if p.profile else None, out)
        created.append("group")
    except (ToolkitError, KeyboardInterrupt):
        undo()
        raise
    out(
        f"group {state.group}: {', '.join(types)} in {', '.join(zones)}, "
        f"{'on-demand' if cfg.market == 'on-demand' else 'spot'}, up to {state.max_attempts} attempt(s), "
        f"deadline {state.deadline.isoformat(timespec='minutes')}"
    )
    switched = []

    def on_failed(activity: dict) -> None:
        # A group has no spot-to-on-demand fallback of its own: for spot-then-on-demand, the
        # first spot failure while we wait switches it (later launches are then on-demand).
        # Only a documented spot capacity, quota or price failure switches it, for good; anything
        # else (a profile IAM has not propagated yet, a throttled call) on-demand would not cure.
        matched = spot_failure(activity)
        if cfg.market == "spot-then-on-demand" and not switched and matched:
            asg.use_on_demand(autoscaling, name, p.profile.name if p.profile else None, out)
            switched.append(True)
            out(f"spot failed ({matched}): the group now launches on-demand (market: spot-then-on-demand)")

    instance_id = asg.wait_first_instance(
        autoscaling, name, cfg.running_timeout_s, every_s=poll_s, out=out, on_failed=on_failed
    )
    out(f"launched {instance_id}; the run goes on without this laptop")
    out(f"follow it: fab watch --name {name}   stop it: fab stop --name {name}")
    return Submitted(state, instance_id)


# --- the laptop side --------------------------------------------------------------------------------
@dataclass
class Where:
    """A detached run as AWS and its record show it now."""

    state: DetachedRun | None
    group: asg.Group | None
    current: instances.InstanceInfo | None


class Detached:
    """One detached run seen from the laptop: found by name (group and instances by tag)."""

    def __init__(self, cfg: AwsConfig, name: str, root: str | None = None):
        self.cfg, self.name = cfg, name
        self.region = aws.region_of(cfg.region, cfg.profile)
        self.ec2 = aws.client("ec2", self.region, cfg.profile)
        self.asg = aws.client("autoscaling", self.region, cfg.profile)
        self.s3 = aws.client("s3", self.region, cfg.profile)
        self._root = root

    def root(self) -> str | None:
        if self._root is None:
            group = asg.describe_group(self.asg, self.name)
            self._root = group.tags.get(asg.ROOT_TAG) if group else None
        return self._root

    def look(self) -> Where:
        group = asg.describe_group(self.asg, self.name)
        root = self.root()
        state = detached.load(self.s3, root) if root else None
        live = [i for i in instances.find_instances(self.ec2, self.name) if i.state in ("pending", "running")]
        return Where(state, group, live[-1] if live else None)

    def set_desired(self, desired: int) -> None:
        asg.set_desired(self.asg, self.name, desired)

    def machine(self, info: instances.InstanceInfo) -> Machine | None:
        """Register the current instance (as `fab launch` would), so `fab logs`/`attach`/`ssh`
        reach it; None until it has an address."""
        try:
            old = registry.get(self.name)
        except ToolkitError:
            old = None
        key_path = str(keys.private_key_path(self.cfg.key_name, self.cfg.import_public_key))
        try:
            record = launch.make_record(self.cfg, info, self.region, key_path)
        except ToolkitError:
            return None
        if old is None or old.instance_id != record.instance_id:
            launch.register_found(record)
        return Machine(record, attempts=1)

    def log_tail(self, where: Where, lines: int = 20) -> str | None:
        if where.current is None or where.state is None:
            return None
        m = self.machine(where.current)
        if m is None:
            return None
        try:
            result = m.run(
                runs.log_command(m.record.remote_dir, where.state.run, lines=lines, follow=False),
                timeout=20,
                retry=False,
                check=False,
            )
        except ToolkitError:
            return None
        return result.stdout if result.code == 0 else None

    def history(self, state: DetachedRun) -> history.RunHistory:
        """The record as `fab run`'s history (the boot writes the same attempts): each attempt's
        steps and S3 reads from its log in S3, its cost from the spot price history; one still
        running counts until now (time and cost so far). ec2.journey.standing does both."""
        h = history.RunHistory(
            name=state.name,
            run=state.run,
            command=state.command,
            started_at=state.submitted_at,
            status=state.status,
            attempts=[dataclasses.replace(a) for a in state.attempts],  # the record stays as read
            nodes=state.nodes,  # a cluster's attempts are not priced: its members are (DetachedNodes)
        )
        standing.note_logs(self.s3, h.attempts)
        standing.until_now(h, self.ec2)
        if state.ended and state.attempts:
            h.finished_at = state.attempts[-1].ended_at
        return h

    def summary(self, state: DetachedRun) -> str:
        return report.summary(self.history(state))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def watch(
    d: Detached, *, out: Say = print, poll_s: float = 15.0, lines: int = 10, once: bool = False
) -> DetachedRun:
    """Follow a detached run until it has ended and its group is empty: state, current instance,
    attempts, the log's tail when it changes, the ledger when an attempt ends; then the summary.
    Ctrl-C stops only the watching."""
    shown = failure_shown = ""
    last_tail = ""
    ledger_at = 0  # attempts ended when the ledger was last shown
    events_shown = 0
    while True:
        where = d.look()
        s = where.state
        # A boot that gave up before it could read the record left the cause on the group.
        failure = where.group.tags.get(asg.FAILURE_TAG) if where.group else None
        if failure and where.group.desired == 0:
            raise ToolkitError(
                f"{d.name}: its boot gave up and stopped the group ({failure}); fix the cause, then "
                f"`fab terminate --name {d.name}` and submit again"
            )
        if failure and failure != failure_shown:
            # The instance could not set desired 0 itself: say so; its own shutdown still ends it.
            out(f"[{d.name}] boot failed, group still desired {where.group.desired}: {failure}")
            failure_shown = failure
        if s is None:
            raise ToolkitError(
                f"no detached run named {d.name!r} here (no group, or its record is gone); "
                "`fab status` lists what runs"
            )
        current = where.current.instance_id if where.current else "-"
        attempt = len(s.attempts)
        line = f"[{d.name}] {s.status} | attempt {attempt} of {s.max_attempts} | instance {current}" + (
            f" | desired {where.group.desired}" if where.group else " | group gone"
        )
        if line != shown:
            out(line)
            shown = line
        # The boot's budget decisions (ec2.remote.spend): the switch to on-demand, the cap reached.
        for e in s.events[events_shown:]:
            out(f"[{d.name}] {e.get('line', e.get('event'))}")
        events_shown = len(s.events)
        ended = sum(1 for a in s.attempts if a.ended_at)
        if ended > ledger_at and not s.ended:  # an attempt ended: its dollars (at the end: the summary)
            for text in ledger.lines(d.history(s)):
                out(text)
            ledger_at = ended
        if not s.ended:
            tail = d.log_tail(where, lines) or ""
            if tail and tail != last_tail:
                new = tail[len(last_tail) :] if tail.startswith(last_tail) else tail
                for text in new.rstrip("\n").splitlines()[-lines:]:
                    out(f"  | {text}")
                last_tail = tail
        group_empty = where.group is None or (where.group.desired == 0 and not where.group.instance_ids)
        if s.ended and (group_empty or where.current is None):
            for a in s.attempts:
                if a.log_uri and a.number == attempt:
                    text = detached.get_ends(d.s3, a.log_uri) or ""
                    for t in text.rstrip("\n").splitlines()[-lines:]:
                        out(f"  | {t}")
            out(d.summary(s))
            if s.output_dir and not is_s3(s.output_dir):
                out(f"outputs: aws s3 sync {detached.outputs_uri(s.root)} outputs/{d.name}")
            return s
        if once:
            return s
        time.sleep(poll_s)


def stop(d: Detached, timeout_s: float, *, out: Say = print, poll_s: float = 2.0) -> DetachedRun:
    """`fab stop`: the record says stop (a boot that starts now ends at once), the trainer is asked
    to checkpoint and exit (TERM to its watcher), then, once the boot has recorded the end or after
    `timeout_s`, the group's desired capacity goes to 0."""
    where = d.look()
    if where.state is None:
        raise ToolkitError(f"no detached run named {d.name!r}; `fab status` lists what runs")
    state = where.state
    if not state.ended:
        # A boot that starts now ends at once. Written by compare-and-swap: a detached cluster's
        # boots write the record too, and neither write may undo the other.
        state = detached_members.update(d.s3, d.root(), lambda s: setattr(s, "stop_requested", True))
    if where.current is not None and not state.ended:
        m = d.machine(where.current)
        if m is None:
            raise ToolkitError(
                f"{where.current.instance_id} has no address yet; retry `fab stop` in a minute"
            )
        m.run(runs.graceful_stop_command(m.record.remote_dir, state.run), check=False, retry=False)
        out(f"asked the trainer on {where.current.instance_id} to checkpoint and stop")
        end = time.monotonic() + timeout_s
        while not (state := detached.load(d.s3, d.root())).ended:
            if time.monotonic() > end:
                out(f"the run has not stopped after {timeout_s:g} s; stopping the group anyway")
                break
            time.sleep(poll_s)
    d.set_desired(0)
    out(f"{d.name}: {state.status}; desired capacity 0 (its instances are terminated by the group)")
    return state
