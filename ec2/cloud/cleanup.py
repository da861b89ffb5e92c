"""`fab cleanup`: what spotrun made once per account and region, removed once nothing uses it: its
IAM roles (per region; a role another region's instances may hold stays for `fab cleanup` there),
its security group and key pair (only ones it created and tagged `spotrun:managed`), and the
laptop's private key of a deleted key pair (only when asked: `delete_key_file`)."""

from __future__ import annotations

from collections.abc import Callable

from common import aws
from common.aws import aws_errors
from ec2 import paths
from ec2.cloud import iam, instances, keys, network
from ec2.config import AwsConfig
from ec2.errors import ToolkitError

Say = Callable[[str], None]


def managed(tags: list[dict] | None) -> bool:
    return any(t.get("Key") == "spotrun:managed" and t.get("Value") == "true" for t in tags or [])


def _delete(what: str, call, out: Say, **kwargs) -> bool:
    # DependencyViolation: still in use (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html)
    with aws_errors(f"deleting {what}", tolerate={"DependencyViolation"}) as refused:
        call(**kwargs)
    if refused.code:
        out(f"kept {what}: still in use (an instance may be shutting down); retry in a minute")
        return False
    out(f"deleted {what}")
    return True


def roles(cfg: AwsConfig, region: str, ec2, out: Say) -> None:
    """spotrun's roles for this region whose instance profiles no live instance holds."""
    client = aws.client("iam", region, cfg.profile)
    used = iam.profiles_in_use(ec2)
    try:
        found = iam.managed_roles(client)
    except ToolkitError as e:  # no IAM rights: the group and key pair can still go
        out(f"kept spotrun's IAM roles: {e}")
        return
    for role in found:
        if role.region != region:
            continue  # another region's instances may hold it: `fab cleanup` there
        if [arn for _, arn in role.profiles if arn in used]:
            out(f"kept IAM role {role.role}: its instance profile is in use")
            continue
        iam.delete_role(client, role)
        # The FIS experiment role (fab rehearse) has no instance profile: say only what went.
        out(
            f"deleted IAM role and instance profile {role.role}"
            if role.profiles
            else f"deleted IAM role {role.role}"
        )


def security_group(cfg: AwsConfig, region: str, ec2, out: Say) -> None:
    group = network.find_group(ec2, cfg.security_group_name, network.vpc_id(ec2, cfg))
    if group is None:
        out(f"no security group {cfg.security_group_name!r} in {region}")
    elif not managed(group.get("Tags")):
        out(f"kept security group {group['GroupId']}: spotrun did not create it")
    elif users := instances.instances_using(ec2, group_id=group["GroupId"]):
        out(f"kept security group {group['GroupId']}: used by {', '.join(i.instance_id for i in users)}")
    else:
        what = f"security group {cfg.security_group_name} ({group['GroupId']})"
        _delete(what, ec2.delete_security_group, out, GroupId=group["GroupId"])


def key_pair(cfg: AwsConfig, region: str, ec2, out: Say, *, delete_key_file: bool) -> None:
    pair = keys.describe_pair(ec2, cfg.key_name)
    if pair is None:
        out(f"no key pair {cfg.key_name!r} in {region}")
        return
    if not managed(pair.get("Tags")):
        out(f"kept key pair {cfg.key_name!r}: spotrun did not create it")
        return
    if users := instances.instances_using(ec2, key_name=cfg.key_name):
        out(f"kept key pair {cfg.key_name!r}: used by {', '.join(i.instance_id for i in users)}")
        return
    if not _delete(f"key pair {cfg.key_name!r}", ec2.delete_key_pair, out, KeyName=cfg.key_name):
        return
    key_file = paths.key_file(cfg.key_name)
    if cfg.import_public_key or not key_file.exists():
        return  # an imported key is the user's own: never deleted
    if delete_key_file:
        key_file.unlink()
        out(f"deleted {key_file} (its key pair is gone)")
    else:
        out(f"kept {key_file}: its key pair is gone, so it opens nothing now; `fab cleanup --yes` deletes it")


def account_leftovers(cfg: AwsConfig, region: str, *, delete_key_file: bool, out: Say = print) -> None:
    """Roles, then the security group, then the key pair (see the module doc)."""
    ec2 = aws.client("ec2", region, cfg.profile)
    roles(cfg, region, ec2, out)
    security_group(cfg, region, ec2, out)
    key_pair(cfg, region, ec2, out, delete_key_file=delete_key_file)
