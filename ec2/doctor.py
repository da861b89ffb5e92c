"""`fab doctor`: everything a first launch needs, checked before money is spent, one row each.

A row is ✓, ✗ (with the fix) or "unknown" (with the reason: an API the account or the test peer
does not offer, a permission the caller lacks). Only ✗ fails. `fab launch` and `fab run` run the
same checks first (`preflight`), less the ones launch repairs itself (the SSH rule).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from common import aws
from common.aws import AWS_FAILURES, error_code
from common.errors import EndpointUnreachable
from ec2 import paths
from ec2.cloud import account, accountsetup, iam, keys, network, quota, s3check, s3scope, typeinfo
from ec2.cloud.ami import resolve_ami
from ec2.cloud.s3scope import Grant
from ec2.config import AwsConfig
from ec2.errors import ToolkitError
from ec2.remote import tools

OK, FAIL, UNKNOWN = s3check.OK, s3check.FAIL, s3check.UNKNOWN
MARK = {OK: "✓", FAIL: "✗", UNKNOWN: "unknown"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self, width: int = 22) -> str:
        text = f"{MARK[self.status]:<8}{self.name:<{width}}{self.detail}"
        return text + (f"\n{'':<8}{'':<{width}}fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Need:
    """One S3 prefix to check: the grant, the setting that named it, whether it is the dataset."""

    grant: Grant
    setting: str
    dataset: bool = False


@dataclass
class Context:
    cfg: AwsConfig
    name: str
    needs: list[Need] = field(default_factory=list)
    region: str = ""
    caller: str = ""


def needs_for(cfg: AwsConfig, dataset_dir=None, checkpoint_dir=None) -> list[Need]:
    """`s3_access` and, for a run, its dataset, checkpoints and notice backup."""
    out = [Need(g, "s3_access") for g in s3scope.from_config(cfg.s3_access)]
    for g in s3scope.for_run(dataset_dir, None, None):
        out.append(Need(g, "dataset.dataset_dir", dataset=True))
    for g in s3scope.for_run(None, checkpoint_dir, None):
        out.append(Need(g, "checkpoint_dir"))
    for g in s3scope.for_run(None, None, cfg.checkpoint_backup_uri):
        out.append(Need(g, "checkpoint_backup_uri"))
    return out


def _aws_failure(e: Exception) -> str:
    return error_code(e) if hasattr(e, "response") else type(e).__name__


# ---------------------------------------------------------------- the checks


def identity(ctx: Context) -> list[Check]:
    try:
        ctx.region = account.resolve_region(ctx.cfg)
    except ToolkitError as e:
        return [Check("region", FAIL, str(e), "set `region:` in configs/aws.yaml or export AWS_REGION")]
    try:
        ctx.caller = account.caller_arn(ctx.region, ctx.cfg.profile)
    except EndpointUnreachable as e:
        # Not a credentials problem: the line already names the endpoint and what to do.
        return [Check("region", OK, ctx.region), Check("AWS endpoint", FAIL, str(e))]
    except ToolkitError as e:
        return [
            Check("region", OK, ctx.region),
            Check("credentials", FAIL, str(e), "aws configure, aws sso login, or set AWS_PROFILE"),
        ]
    return [Check("region", OK, ctx.region), Check("credentials", OK, ctx.caller)]


def image(ctx: Context) -> list[Check]:
    ec2 = aws.client("ec2", ctx.region, ctx.cfg.profile)
    try:
        ami = resolve_ami(ctx.cfg, ec2, aws.client("ssm", ctx.region, ctx.cfg.profile))
    except ToolkitError as e:
        return [Check("AMI", FAIL, str(e), "set `ami_flavour: auto`, or `ami:` to an image of this region")]
    detail = f"{ami.image_id} {ami.name} ({ami.reason})"
    if ami.warning:
        detail += f"; warning: {ami.warning}"
    return [Check("AMI", OK, detail)]


def quotas(ctx: Context) -> list[Check]:
    """Per quota group of the configured types: the quota against the largest type's vCPUs."""
    cfg = ctx.cfg
    infos = typeinfo.describe(aws.client("ec2", ctx.region, cfg.profile), cfg.instance_types)
    rows = [
        Check("instance type", FAIL, f"{t} is not an EC2 instance type", "fix `instance_types`")
        for t in cfg.instance_types
        if t not in infos
    ]
    sq = aws.client("service-quotas", ctx.region, cfg.profile, attempts=2)
    for group, members in _groups(infos.values()).items():
        largest = max(members, key=lambda i: i.vcpus)
        need = largest.vcpus
        found, unknown = [], []
        for market in quota.markets_of(cfg.market):
            ref = quota.quota_for(largest.instance_type, market)
            try:
                found.append((ref, quota.value(sq, ref.code)))
            except quota.QuotaUnknown as e:
                unknown.append(f"{ref.name} ({ref.code}): {e}")
        parts = [f"{ref.name} ({ref.code}): {v:g} vCPUs" for ref, v in found] + unknown
        detail = "; ".join(parts) + f"; {largest.instance_type} needs {need}"
        name = f"vCPU quota ({group})"
        if any(v >= need for _, v in found):
            rows.append(Check(name, OK, detail))
        elif unknown:
            rows.append(Check(name, UNKNOWN, detail))
        else:
            ref = found[0][0]
            fix = (
                f"fab doctor --request-quota {need} (or: {quota.request_command(ref.code, need, ctx.region)})"
            )
            rows.append(Check(name, FAIL, detail, fix))
    return rows


def _groups(infos: Iterable[typeinfo.TypeInfo]) -> dict[str, list[typeinfo.TypeInfo]]:
    out: dict[str, list[typeinfo.TypeInfo]] = {}
    for info in infos:
        group = quota.group_of(info.instance_type)
        if group is not None:
            out.setdefault(group, []).append(info)
    return out


def request_quota(cfg: AwsConfig, desired: int, out: Callable[[str], None] = print) -> None:
    """File a Service Quotas increase to ``desired`` vCPUs for each configured group (the spot
    quota, unless the market is on-demand)."""
    region = account.resolve_region(cfg)
    infos = typeinfo.describe(aws.client("ec2", region, cfg.profile), cfg.instance_types)
    market = quota.ON_DEMAND if cfg.market == "on-demand" else quota.SPOT
    sq = aws.client("service-quotas", region, cfg.profile)
    for members in _groups(infos.values()).values():
        ref = quota.quota_for(members[0].instance_type, market)
        got = quota.request_increase(sq, ref.code, desired)
        out(
            f"requested {desired} vCPUs of {ref.name} ({ref.code}) in {region}: {got.get('Status', '?')}"
            + (f", case {got['CaseId']}" if got.get("CaseId") else "")
            + "; AWS answers by e-mail, often within hours"
        )


def _principal(caller: str) -> str | None:
    """The IAM ARN to simulate for an STS caller ARN (None: the account root, which may do all)."""
    if caller.endswith(":root"):
        return None
    if ":assumed-role/" in caller:
        role = caller.split(":assumed-role/", 1)[1].split("/", 1)[0]
        return f"arn:{iam.partition_of(caller)}:iam::{iam.account_of(caller)}:role/{role}"
    return caller


def _may_create(ctx: Context, role: str) -> tuple[str, str]:
    principal = _principal(ctx.caller)
    if principal is None:
        return OK, "the account root may create it"
    part, acct = iam.partition_of(ctx.caller), iam.account_of(ctx.caller)
    asks = [
        (
            ["iam:CreateRole", "iam:PutRolePolicy", "iam:PassRole"],
            f"arn:{part}:iam::{acct}:role{iam.PATH}{role}",
        ),
        (
            ["iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile"],
            f"arn:{part}:iam::{acct}:instance-profile{iam.PATH}{role}",
        ),
    ]
    client = aws.client("iam", ctx.region, ctx.cfg.profile, attempts=1)
    denied = []
    try:
        for actions, resource in asks:
            result = client.simulate_principal_policy(
                PolicySourceArn=principal, ActionNames=actions, ResourceArns=[resource]
            )
            denied += [
                r["EvalActionName"] for r in result["EvaluationResults"] if r["EvalDecision"] != "allowed"
            ]
    except AWS_FAILURES as e:
        return (
            UNKNOWN,
            f"cannot tell whether you may create it (iam:SimulatePrincipalPolicy: {_aws_failure(e)})",
        )
    if denied:
        return FAIL, f"you may not {', '.join(denied)}"
    return OK, "you may create it"


def profile(ctx: Context) -> list[Check]:
    cfg = ctx.cfg
    setting = cfg.iam_instance_profile
    client = aws.client("iam", ctx.region, cfg.profile)
    if not setting:
        if ctx.needs:
            return [
                Check(
                    "instance profile",
                    FAIL,
                    "none, so the instance cannot reach S3",
                    "set `iam_instance_profile: auto` (or a profile name)",
                )
            ]
        return [Check("instance profile", OK, "none (the instance reaches no S3)")]
    if setting != "auto":
        name = setting.rsplit("/", 1)[-1]
        try:
            roles = client.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        except AWS_FAILURES as e:
            code = _aws_failure(e)
            if code == "NoSuchEntity":
                return [
                    Check(
                        "instance profile",
                        FAIL,
                        f"{name} does not exist",
                        "create it, or set `iam_instance_profile: auto`",
                    )
                ]
            return [Check("instance profile", UNKNOWN, f"{name}: cannot read it ({code})")]
        return [
            Check(
                "instance profile", OK, f"{name} (role {', '.join(r['RoleName'] for r in roles) or 'none'})"
            )
        ]
    role = iam.role_name(ctx.name, ctx.region)
    try:
        client.get_role(RoleName=role)
        return [
            Check(
                "instance profile",
                OK,
                f"auto: {role} exists; launch sets its S3 policy to the run's prefixes",
            )
        ]
    except AWS_FAILURES as e:
        if _aws_failure(e) != "NoSuchEntity":
            return [Check("instance profile", UNKNOWN, f"auto: cannot read role {role} ({_aws_failure(e)})")]
    status, detail = _may_create(ctx, role)
    fix = iam.ask_an_admin(ctx.caller) if status == FAIL else ""
    return [Check("instance profile", status, f"auto: {role} will be made at launch; {detail}", fix)]


def s3_prefixes(ctx: Context) -> list[Check]:
    s3 = aws.client("s3", ctx.region, ctx.cfg.profile)
    rows, seen = [], {}
    for need in ctx.needs:
        g = need.grant
        if g.bucket not in seen:
            seen[g.bucket] = s3check.bucket(s3, g.bucket, ctx.region, need.setting)
            rows.append(Check("S3 bucket", *seen[g.bucket]))
        if seen[g.bucket][0] == FAIL:
            continue
        rows.append(Check(f"S3 {need.setting}", *s3check.prefix(s3, g, need.setting, need.dataset)))
    return rows


def key_pair(ctx: Context) -> list[Check]:
    cfg = ctx.cfg
    ec2 = aws.client("ec2", ctx.region, cfg.profile)
    pair = keys.describe_pair(ec2, cfg.key_name)
    local = paths.key_file(cfg.key_name)
    if cfg.import_public_key:
        return [Check("key pair", OK, f"{cfg.key_name}: your own key {cfg.import_public_key}")]
    if pair is None:
        if local.exists():
            return [
                Check(
                    "key pair",
                    FAIL,
                    f"{local} exists but EC2 has no pair {cfg.key_name!r}",
                    "set `import_public_key:` to its .pub, or `key_name:` to a new name",
                )
            ]
        return [Check("key pair", OK, f"{cfg.key_name}: made at first launch, saved to {local}")]
    if not local.exists():
        return [
            Check(
                "key pair",
                FAIL,
                f"EC2 has pair {cfg.key_name!r} but {local} is missing",
                "restore the file, or `fab cleanup` (deletes an unused pair), or set `key_name:` anew",
            )
        ]
    mode = local.stat().st_mode & 0o077
    if mode:
        return [
            Check("key pair", FAIL, f"{local} is readable by others; ssh refuses it", f"chmod 400 {local}")
        ]
    return [keys_agree(ec2, cfg.key_name, local)]


def keys_agree(ec2, key_name: str, local) -> Check:
    """The pair's public key (AWS keeps it) against the one derived from the local private key."""
    try:
        pairs = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"]
        remote = (pairs[0].get("PublicKey") or "").split()
    except AWS_FAILURES as e:
        return Check("key pair", UNKNOWN, f"cannot read {key_name}'s public key ({_aws_failure(e)})")
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(local)], capture_output=True, text=True)
    if derived.returncode != 0 or len(remote) < 2:
        return Check(
            "key pair", UNKNOWN, f"cannot compare {local} with {key_name} (ssh-keygen or AWS gave no key)"
        )
    if derived.stdout.split()[1] != remote[1]:
        return Check(
            "key pair",
            FAIL,
            f"{local} is not the private key of EC2 pair {key_name!r}",
            "restore the right file, or set `key_name:` to a new name (a new pair is made)",
        )
    return Check("key pair", OK, f"{key_name} matches {local}")


def ssh_rule(ctx: Context) -> list[Check]:
    cfg = ctx.cfg
    ec2 = aws.client("ec2", ctx.region, cfg.profile)
    try:
        group = network.find_group(ec2, cfg.security_group_name, network.vpc_id(ec2, cfg))
        cidr = network.ssh_cidr(cfg)
    except ToolkitError as e:
        return [Check("security group", UNKNOWN, str(e))]
    if group is None:
        return [
            Check("security group", OK, f"{cfg.security_group_name}: made at first launch, SSH from {cidr}")
        ]
    allowed = network.ssh_cidrs(group, cfg.ssh_port)
    if cidr not in allowed:
        return [
            Check(
                "security group",
                FAIL,
                f"{group['GroupId']} admits SSH from {', '.join(allowed) or 'nobody'}, not you ({cidr})",
                "fab allow-my-ip",
            )
        ]
    return [Check("security group", OK, f"{group['GroupId']} admits SSH (port {cfg.ssh_port}) from {cidr}")]


def account_setup(ctx: Context) -> list[Check]:
    """The service-linked roles spot and Auto Scaling need, and the default EBS key (see
    ec2.cloud.accountsetup)."""
    cfg = ctx.cfg
    iam_client = aws.client("iam", ctx.region, cfg.profile, attempts=1)
    part, acct = iam.partition_of(ctx.caller), iam.account_of(ctx.caller)
    principal = _principal(ctx.caller)
    rows = []
    roles = [accountsetup.AUTOSCALING_ROLE]
    if cfg.market != "on-demand":
        roles.insert(0, accountsetup.SPOT_ROLE)
    for role, service, use in roles:
        got = accountsetup.service_linked_role(iam_client, principal, part, acct, role, service, use)
        rows.append(Check("service-linked role", *got))
    role, service, _ = accountsetup.AUTOSCALING_ROLE
    got = accountsetup.default_ebs_key(
        aws.client("ec2", ctx.region, cfg.profile, attempts=1),
        aws.client("kms", ctx.region, cfg.profile, attempts=1),
        accountsetup.role_arn(part, acct, role, service),
    )
    rows.append(Check("default EBS key", *got))
    return rows


# ---------------------------------------------------------------- running them

AWS_CHECKS = (image, quotas, profile, s3_prefixes, key_pair)


def run(ctx: Context, *, for_launch: bool = False) -> list[Check]:
    """All checks, in order; without a region or credentials the AWS ones are "unknown"."""
    rows = identity(ctx)
    aws_checks = AWS_CHECKS if for_launch else (*AWS_CHECKS, ssh_rule, account_setup)
    if any(r.status == FAIL for r in rows):
        rows += [
            Check(c.__name__.replace("_", " "), UNKNOWN, "needs a region and credentials") for c in aws_checks
        ]
    else:
        for check in aws_checks:
            try:
                rows += check(ctx)
            except ToolkitError as e:  # an unexpected AWS refusal: say it, keep checking
                rows.append(Check(check.__name__.replace("_", " "), UNKNOWN, str(e)))
    return rows + [Check(*row) for row in tools.local_tools()]


def table(rows: list[Check]) -> str:
    width = max(len(r.name) for r in rows) + 2
    return "\n".join(r.line(width) for r in rows)


def preflight(cfg: AwsConfig, name: str, needs: list[Need], out: Callable[[str], None] = print) -> None:
    """`fab launch` / `fab run`: the checks first; any ✗ stops before an instance is paid for. A
    bad region or missing credentials stop with their own one-line error."""
    region = account.resolve_region(cfg)
    account.caller_arn(region, cfg.profile)
    rows = run(Context(cfg, name, needs), for_launch=True)
    failed = [r for r in rows if r.status == FAIL]
    if failed:
        out(table(rows))
        raise ToolkitError(
            f"preflight: {len(failed)} check(s) failed ({', '.join(r.name for r in failed)}); "
            "fix them (see above), nothing was launched"
        )
    out(f"preflight: {len(rows)} checks passed or unknown (`fab doctor` shows them)")
