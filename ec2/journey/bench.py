"""`fab bench`: measure the user's own training step on a machine, price it, keep it.

- `on_machine`: a registered (launched or adopted) machine; its type, zone and market come from
  the machine's own instance metadata, a machine that is not on EC2 is kept as ``not-ec2``. The
  step is measured as `fab run` would train there: one rank per GPU (or `--gpus` of them), and the
  result is kept under the GPUs those ranks used.
- `on_types`: one spot instance per type (cheapest zone), launched in waves that fit the account's
  vCPU quotas (ec2.cloud.quota), each set up, measured on all its GPUs and terminated, whatever happens: a
  failure, a refusal or Ctrl-C ends every instance this bench launched (found again by its tag).
  A type AWS has no capacity for is one row saying so.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from common import aws
from common.errors import ToolkitError
from ec2 import benchstore
from ec2.benchstore import BenchRecord
from ec2.cloud import account, instances, keys, launch, network, pricing, quota, typeinfo
from ec2.config import AwsConfig
from ec2.errors import CapacityError, QuotaError
from ec2.remote import benchrun
from ec2.remote.ssh import Machine
from ec2.remote.sync import sync_code
from ec2.remote.trainrun import setup_command, train_env
from ml.config import load_train_config
from ml.shape import shape_key


def price_of(identity: dict, profile: str | None) -> float | None:
    """The $/h the machine runs at: the current spot price of its type in its zone, or the
    on-demand price; None when it is not on EC2 or AWS cannot say (the bench is kept anyway)."""
    if not identity.get("ec2") or not identity.get("instance_type"):
        return None
    itype, zone = identity["instance_type"], identity.get("zone")
    region = identity.get("region") or pricing.region_of_zone(zone)
    try:
        if identity.get("market") == "spot" and zone and region:
            ec2 = aws.client("ec2", region, profile)
            return pricing.current_prices(pricing.spot_history(ec2, [itype], zones=[zone])).get((itype, zone))
        return pricing.on_demand_price(itype, region, profile)
    except ToolkitError:
        return None


def to_record(
    measured: benchrun.Measured, machine: str, train_config: str, price: float | None
) -> BenchRecord:
    r, who = measured.result, measured.identity
    on_ec2 = bool(who.get("ec2")) and bool(who.get("instance_type"))
    return BenchRecord(
        instance_type=who["instance_type"] if on_ec2 else benchstore.NOT_EC2,
        gpus=measured.gpus,
        processes=int(r.get("processes", measured.processes)),
        shape_key=r["shape_key"],
        train_config=train_config,
        median_step_s=float(r["median_step_s"]),
        data_wait_share=float(r["data_wait_share"]),
        peak_gpu_mem_bytes=r.get("peak_gpu_mem_bytes"),
        device_name=str(r.get("device_name", "")),
        steps=int(r["steps"]),
        machine=machine,
        measured_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        zone=who.get("zone") if on_ec2 else None,
        market=who.get("market") if on_ec2 else None,
        usd_per_hour=price,
        usd=None if price is None else price * measured.wall_s / 3600,
        wall_s=measured.wall_s,
    )


def check_shape(train_config: str, overrides: list[str]) -> str:
    """The config's shape key, read here first: a bad config fails before anything is launched."""
    return shape_key(load_train_config(train_config, overrides))


def on_machine(
    m: Machine,
    train_config: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    region: str | None,
    profile: str | None,
    echo: bool = True,
    launched: dict | None = None,
    gpus: int | None = None,
) -> BenchRecord:
    """Measure on ``m`` (one rank per GPU, or ``gpus`` ranks) and keep the result. ``launched``: the
    identity of an instance this bench launched itself (type, zone, market as EC2 reported them),
    which then names the result."""
    measured = benchrun.measure(m, train_config, overrides, steps, warmup, train_env(region), echo, gpus)
    if launched is not None:
        measured = dataclasses.replace(measured, identity=launched)
    record = to_record(measured, m.name, train_config, price_of(measured.identity, profile))
    benchstore.save(record)
    return record


@dataclass(frozen=True)
class TypeRow:
    instance_type: str
    record: BenchRecord | None
    problem: str = ""  # why there is no measurement ("no capacity: ...", a failure's line)
    usd: float | None = None  # launch to termination at the measured price


def waves(types: list[str], vcpus: dict[str, int], limits: dict[str, float | None]) -> list[list[str]]:
    """Groups of types to launch together: per quota group (keyed by its quota code in ``limits``;
    a type without one stands alone), as many as fit its vCPU quota; an unknown quota (None)
    allows one at a time. A type larger than its quota gets a wave of its own (AWS then refuses it,
    and its row says so)."""
    per_group: dict[str, list[list[str]]] = {}
    for t in types:
        ref = quota.quota_for(t, quota.SPOT)
        group = ref.code if ref else f"alone:{t}"
        limit = limits.get(group)
        batches = per_group.setdefault(group, [])
        if (
            batches
            and limit is not None
            and sum(vcpus.get(x, 0) for x in batches[-1]) + vcpus.get(t, 0) <= limit
        ):
            batches[-1].append(t)
        else:
            batches.append([t])
    depth = max((len(b) for b in per_group.values()), default=0)
    return [[t for b in per_group.values() if i < len(b) for t in b[i]] for i in range(depth)]


def quota_limits(region: str, profile: str | None, types: list[str]) -> dict[str, float | None]:
    sq = aws.client("service-quotas", region, profile, attempts=2)
    out: dict[str, float | None] = {}
    for t in types:
        ref = quota.quota_for(t, quota.SPOT)
        if ref and ref.code not in out:
            try:
                out[ref.code] = quota.value(sq, ref.code)
            except quota.QuotaUnknown:
                out[ref.code] = None
    return out


def bench_name(base: str, instance_type: str) -> str:
    return f"{base}-{instance_type.replace('.', '-')}"


def on_types(
    cfg: AwsConfig,
    types: list[str],
    base_name: str,
    train_config: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    python: str | None = None,
    require_gpu: bool = True,
    out: Callable[[str], None] = print,
) -> list[TypeRow]:
    """One spot instance per type, measured and terminated; one row per type (see module doc)."""
    check_shape(train_config, overrides)
    region = account.resolve_region(cfg)
    ec2 = aws.client("ec2", region, cfg.profile)
    vcpus = {t: i.vcpus for t, i in typeinfo.describe(ec2, types).items()}
    plan = waves(types, vcpus, quota_limits(region, cfg.profile, types))
    names = {t: bench_name(base_name, t) for t in types}
    if any(len(w) > 1 for w in plan):
        # Launches side by side would race to create the shared key pair and security group on a
        # first use (both see none, one creation fails): make them once, here, first.
        owner = account.caller_arn(region, cfg.profile)
        keys.ensure_key_pair(ec2, cfg.key_name, owner, cfg.import_public_key)
        network.ensure_group(ec2, cfg, network.ssh_cidr(cfg), owner)

    def one(t: str) -> TypeRow:
        say = lambda line: out(f"[{t}] {line}")  # noqa: E731 - one prefix per type
        one_cfg = dataclasses.replace(cfg, instance_types=[t], market="spot")
        started = time.monotonic()
        record = None
        try:
            try:
                record = launch.launch(one_cfg, names[t], out=say)
            except CapacityError as e:
                return TypeRow(t, None, f"no spot capacity ({e.code})")
            except QuotaError as e:
                return TypeRow(t, None, f"refused by quota ({e.code})")
            m = Machine(record)
            sync_code(m, ".")
            done = m.run(setup_command(record.remote_dir, python, require_gpu), check=False)
            if done.code:
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
                raise ToolkitError(f"setup failed (exit {done.code}): {tail}")
            say("measuring")
            launched = {
                "ec2": True,
                "instance_type": record.instance_type or t,
                "zone": record.zone,
                "market": "spot",
                "region": region,
            }
            rec = on_machine(m, train_config, overrides, steps, warmup, region, cfg.profile, False, launched)
            say(f"median {rec.median_step_s * 1000:.1f} ms/step")
            cost = (
                None if rec.usd_per_hour is None else rec.usd_per_hour * (time.monotonic() - started) / 3600
            )
            return TypeRow(t, rec, "", cost)
        except ToolkitError as e:
            return TypeRow(t, None, f"failed: {e}")
        finally:
            if record is not None:
                _end(ec2, names[t], say)

    rows: dict[str, TypeRow] = {}
    try:
        for wave in plan:
            with ThreadPoolExecutor(max_workers=len(wave)) as pool:
                for t, row in zip(wave, pool.map(one, wave), strict=True):
                    rows[t] = row
    finally:
        # Whatever ended the bench (Ctrl-C, a bug): every instance it launched ends too, found by tag.
        for t in types:
            _end(ec2, names[t], out)
    return [rows.get(t, TypeRow(t, None, "not measured (stopped)")) for t in types]


def _end(ec2, name: str, out: Callable[[str], None]) -> None:
    live = instances.find_instances(ec2, name)
    if live:
        instances.terminate_instances(ec2, [i.instance_id for i in live], wait=False)
        out(f"terminated {name} ({', '.join(i.instance_id for i in live)})")
    instances.forget_local(name)


def table(rows: list[TypeRow]) -> str:
    head = ["TYPE", "GPUS", "MS/STEP", "DATA WAIT", "PEAK GPU MEM", "$/H", "BENCH COST", "NOTE"]
    body = []
    for row in rows:
        r = row.record
        if r is None:
            body.append([row.instance_type, "-", "-", "-", "-", "-", "-", row.problem])
            continue
        mem = "no GPU" if r.peak_gpu_mem_bytes is None else f"{r.peak_gpu_mem_bytes / 2**30:.2f} GiB"
        body.append(
            [
                row.instance_type,
                str(r.gpus),
                f"{r.median_step_s * 1000:.1f}",
                f"{r.data_wait_share:.0%}",
                mem,
                "-" if r.usd_per_hour is None else f"${r.usd_per_hour:.4f}",
                "-" if row.usd is None else f"${row.usd:.4f}",
                f"{r.device_name}, {r.zone or '-'}",
            ]
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in [head, *body]
    )
