"""The instance's IAM role for S3, made by spotrun (`iam_instance_profile: auto`).

One role (and one instance profile of the same name) per instance name and region, under the IAM
path /spotrun/: least privilege. Each machine's role reaches only the prefixes its own runs need,
so widening it for one run grants nothing to another machine, and `fab cleanup` can delete a role
as soon as its machine is gone. (One role per account and region with a merged policy would save
an IAM call per launch, but every instance would then read and write every run's prefixes.)

The role trusts only ec2.amazonaws.com; its one inline policy (POLICY_NAME) is built by
ec2.cloud.s3scope from the prefixes (`s3_access`, and a run's dataset_dir, checkpoint_dir and
checkpoint_backup_uri). `put_policy` takes extra statements for callers that need more than S3.

A caller who may not create roles gets one line: the permission missing, a policy file for an
admin, and the alternative (`iam_instance_profile: NAME`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import botocore.exceptions

from common.atomic import atomic_write_text
from common.aws import aws_errors, error_code, translate
from ec2 import paths
from ec2.cloud import s3scope
from ec2.cloud.s3scope import Grant
from ec2.errors import AwsError

PATH = "/spotrun/"
POLICY_NAME = "spotrun-s3"
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


class IamPermissionError(AwsError):
    """The caller may not manage spotrun's role: the message says what to ask an admin for."""


@dataclass(frozen=True)
class Profile:
    name: str
    arn: str
    role: str
    created: bool  # made just now: RunInstances may not see it for a few seconds
    # The role itself was made by this call (not found, and not made by a parallel launch):
    # a launch that fails removes it again (launch.py), a role that was there before it keeps.
    role_created: bool = False


def role_name(instance_name: str, region: str) -> str:
    """``spotrun-<region>-<name>``; IAM role names stop at 64 characters, so a long one keeps its
    start and a hash of the whole (still unique, still recognisable)."""
    name = f"spotrun-{region}-{instance_name}"
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:55]}-{digest}"


def partition_of(arn: str) -> str:
    """``arn:aws-cn:sts::...`` → ``aws-cn`` (S3 and IAM ARNs differ per partition)."""
    parts = arn.split(":")
    return parts[1] if len(parts) > 1 and parts[1] else "aws"


def account_of(arn: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 4 and parts[4] else "ACCOUNT_ID"


# The service-linked roles a fresh account's first spot launch and first Auto Scaling group make
# (without iam:CreateServiceLinkedRole: AuthFailure.ServiceLinkedRoleCreationNotPermitted).
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/autoscaling-service-linked-role.html
SERVICE_LINKED_ROLES = {
    "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
    "autoscaling.amazonaws.com": "AWSServiceRoleForAutoScaling",
}


def caller_policy(caller_arn: str) -> dict:
    """What a caller needs for `iam_instance_profile: auto`: manage roles and profiles under
    /spotrun/ only, and pass them to EC2; and what a first launch in a fresh account needs beyond
    the EC2 basics and is easily missed: creating the two service-linked roles (those only),
    tagging (TagSpecifications at launch, volume tags), spot placement scores and on-demand prices."""
    part, account = partition_of(caller_arn), account_of(caller_arn)
    roles = f"arn:{part}:iam::{account}:role{PATH}*"
    profiles = f"arn:{part}:iam::{account}:instance-profile{PATH}*"
    linked = [
        f"arn:{part}:iam::{account}:role/aws-service-role/{service}/{role}"
        for service, role in SERVICE_LINKED_ROLES.items()
    ]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SpotrunRoles",
                "Effect": "Allow",
                "Action": [
                    "iam:CreateRole",
                    "iam:GetRole",
                    "iam:TagRole",
                    "iam:DeleteRole",
                    "iam:PutRolePolicy",
                    "iam:GetRolePolicy",
                    "iam:DeleteRolePolicy",
                    "iam:ListRolePolicies",
                    "iam:ListInstanceProfilesForRole",
                    "iam:PassRole",
                ],
                "Resource": roles,
            },
            {
                "Sid": "SpotrunInstanceProfiles",
                "Effect": "Allow",
                "Action": [
                    "iam:CreateInstanceProfile",
                    "iam:GetInstanceProfile",
                    "iam:TagInstanceProfile",
                    "iam:AddRoleToInstanceProfile",
                    "iam:RemoveRoleFromInstanceProfile",
                    "iam:DeleteInstanceProfile",
                ],
                "Resource": profiles,
            },
            {"Sid": "SpotrunListRoles", "Effect": "Allow", "Action": "iam:ListRoles", "Resource": "*"},
            {
                "Sid": "SpotrunServiceLinkedRoles",
                "Effect": "Allow",
                "Action": "iam:CreateServiceLinkedRole",
                "Resource": linked,
                "Condition": {"StringEquals": {"iam:AWSServiceName": list(SERVICE_LINKED_ROLES)}},
            },
            {
                # GetSpotPlacementScores and pricing:GetProducts take no resource; CreateTags tags
                # what spotrun creates at launch and its volumes afterwards.
                "Sid": "SpotrunTagsScoresPrices",
                "Effect": "Allow",
                "Action": ["ec2:CreateTags", "ec2:GetSpotPlacementScores", "pricing:GetProducts"],
                "Resource": "*",
            },
        ],
    }


def caller_policy_file() -> str:
    return str(paths.spotrun_home() / "iam-policy-for-spotrun.json")


def ask_an_admin(caller_arn: str) -> str:
    """Write the policy a caller needs to a file; the advice naming it and the alternative."""
    path = caller_policy_file()
    atomic_write_text(path, json.dumps(caller_policy(caller_arn), indent=2) + "\n")
    return (
        f"ask an admin to attach the policy in {path}, or set `iam_instance_profile: NAME` to an "
        "existing instance profile that reaches your buckets"
    )


def permission_error(error: botocore.exceptions.ClientError, caller_arn: str) -> IamPermissionError:
    """One line for a refused IAM call (or RunInstances refused iam:PassRole), with the policy an
    admin can attach written to a file."""
    operation = getattr(error, "operation_name", "") or "an IAM call"
    message = error.response.get("Error", {}).get("Message", "")
    action = "iam:PassRole" if "iam:PassRole" in message else f"iam:{operation}"
    return IamPermissionError(
        f"{caller_arn} may not {action}, which `iam_instance_profile: auto` needs to give the instance "
        f"its S3 role; {ask_an_admin(caller_arn)}",
        error_code(error),
    )


def _tags(instance_name: str, region: str, owner: str) -> list[dict]:
    return [
        {"Key": "spotrun:managed", "Value": "true"},
        {"Key": "spotrun:name", "Value": instance_name},
        {"Key": "spotrun:region", "Value": region},
        {"Key": "spotrun:owner", "Value": owner},
    ]


def _call(doing: str, caller_arn: str, fn: Callable, tolerate: Iterable[str] = (), **kwargs):
    """One IAM call: a refusal becomes the permission line, a tolerated code returns None."""
    try:
        return fn(**kwargs)
    except botocore.exceptions.ClientError as e:
        code = error_code(e)
        if code in tolerate:
            return None
        if code in DENIED:
            raise permission_error(e, caller_arn) from None
        raise translate(e, doing) from None
    except botocore.exceptions.BotoCoreError as e:
        raise translate(e, doing) from None


def put_policy(
    iam, role: str, grants: Iterable[Grant], caller_arn: str, extra: Iterable[dict] = ()
) -> dict | None:
    """Set the role's inline policy to exactly ``grants`` (+ ``extra`` statements); with neither,
    remove it. Returns the document put (None: removed)."""
    grants, extra = list(grants), list(extra)
    if not grants and not extra:
        _call(
            f"removing {role}'s policy",
            caller_arn,
            iam.delete_role_policy,
            tolerate={"NoSuchEntity"},
            RoleName=role,
            PolicyName=POLICY_NAME,
        )
        return None
    document = s3scope.policy_document(grants, partition_of(caller_arn), extra)
    _call(
        f"setting {role}'s S3 policy",
        caller_arn,
        iam.put_role_policy,
        RoleName=role,
        PolicyName=POLICY_NAME,
        PolicyDocument=json.dumps(document),
    )
    return document


def current_policy(iam, role: str, caller_arn: str) -> dict:
    """The role's spotrun policy document ({} when it has none)."""
    got = _call(
        f"reading {role}'s policy",
        caller_arn,
        iam.get_role_policy,
        tolerate={"NoSuchEntity"},
        RoleName=role,
        PolicyName=POLICY_NAME,
    )
    if not got:
        return {}
    document = got["PolicyDocument"]
    # boto3 returns the document decoded; a raw (URL-encoded JSON) string is decoded here too.
    return json.loads(document) if isinstance(document, str) else document


def ensure_profile(
    iam,
    instance_name: str,
    region: str,
    caller_arn: str,
    grants: Iterable[Grant],
    extra: Iterable[dict] = (),
    out: Callable[[str], None] = print,
) -> Profile:
    """The role and instance profile for ``instance_name`` in ``region``, created when missing,
    with its policy set to exactly ``grants`` (a new machine of that name starts from what it
    needs, not from what earlier runs added)."""
    name = role_name(instance_name, region)
    tags = _tags(instance_name, region, caller_arn)
    role = _call(
        f"reading IAM role {name}", caller_arn, iam.get_role, tolerate={"NoSuchEntity"}, RoleName=name
    )
    created, role_created = role is None, False
    if created:
        made = _call(
            f"creating IAM role {name}",
            caller_arn,
            iam.create_role,
            tolerate={"EntityAlreadyExists"},  # a parallel launch made it first: same result
            Path=PATH,
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"spotrun: S3 access for instance {instance_name} in {region}",
            Tags=tags,
        )
        role_created = made is not None
    document = put_policy(iam, name, grants, caller_arn, extra)
    profile = _call(
        f"reading instance profile {name}",
        caller_arn,
        iam.get_instance_profile,
        tolerate={"NoSuchEntity"},
        InstanceProfileName=name,
    )
    if profile is None:
        created = True
        _call(
            f"creating instance profile {name}",
            caller_arn,
            iam.create_instance_profile,
            tolerate={"EntityAlreadyExists"},
            InstanceProfileName=name,
            Path=PATH,
            Tags=tags,
        )
        profile = _call(
            f"reading instance profile {name}", caller_arn, iam.get_instance_profile, InstanceProfileName=name
        )
    info = profile["InstanceProfile"]
    if name not in [r["RoleName"] for r in info.get("Roles", [])]:
        created = True
        _call(
            f"adding role {name} to its instance profile",
            caller_arn,
            iam.add_role_to_instance_profile,
            tolerate={"LimitExceeded"},  # already holds it (a parallel launch)
            InstanceProfileName=name,
            RoleName=name,
        )
    reach = ", ".join(g.describe() for g in s3scope.minimal(grants)) if document else "no S3 prefixes yet"
    out(f"instance role: {'created' if created else 'using'} {name} ({reach})")
    return Profile(name, info["Arn"], name, created, role_created)


def widen(
    iam, role: str, want: Iterable[Grant], caller_arn: str, out: Callable[[str], None] = print
) -> list[Grant]:
    """Add to ``role``'s policy the grants in ``want`` it does not cover yet (same scoping; other
    statements kept). Returns what was added ([] when it already covered them)."""
    document = current_policy(iam, role, caller_arn)
    have = s3scope.grants_in(document)
    added = s3scope.missing(have, want)
    if added:
        put_policy(iam, role, [*have, *added], caller_arn, s3scope.extra_statements(document))
        out(
            f"instance role {role}: widened to reach {', '.join(g.describe() for g in added)} "
            "(the running instance picks this up within seconds)"
        )
    return added


def managed_role_of(iam, profile_arn: str, caller_arn: str) -> str | None:
    """The spotrun role inside an instance profile ARN (None: not a spotrun profile)."""
    name = profile_arn.rsplit("/", 1)[-1]
    if f":instance-profile{PATH}" not in profile_arn:
        return None
    got = _call(
        f"reading instance profile {name}",
        caller_arn,
        iam.get_instance_profile,
        tolerate={"NoSuchEntity"},
        InstanceProfileName=name,
    )
    roles = got["InstanceProfile"].get("Roles", []) if got else []
    return roles[0]["RoleName"] if roles else None


@dataclass(frozen=True)
class ManagedRole:
    role: str
    profiles: tuple[tuple[str, str], ...]  # (name, arn)
    region: str | None


def managed_roles(iam) -> list[ManagedRole]:
    """spotrun's roles (path /spotrun/) with their instance profiles and the region they serve."""
    out = []
    with aws_errors("listing spotrun's IAM roles"):
        for page in iam.get_paginator("list_roles").paginate(PathPrefix=PATH):
            for role in page["Roles"]:
                name = role["RoleName"]
                tags = {t["Key"]: t["Value"] for t in iam.get_role(RoleName=name)["Role"].get("Tags", [])}
                if tags.get("spotrun:managed") != "true":
                    continue
                profiles = iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
                out.append(
                    ManagedRole(
                        name,
                        tuple((p["InstanceProfileName"], p["Arn"]) for p in profiles),
                        tags.get("spotrun:region"),
                    )
                )
    return out


def profiles_in_use(ec2) -> set[str]:
    """Instance profile ARNs held by live instances of this region (anyone's)."""
    used = set()
    with aws_errors("listing instances and their instance profiles"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for raw in reservation["Instances"]:
                    arn = raw.get("IamInstanceProfile", {}).get("Arn")
                    if arn:
                        used.add(arn)
    return used


def delete_role(iam, managed: ManagedRole) -> None:
    """Delete a spotrun role and its instance profiles (the order IAM requires: out of the
    profile, profile, inline policies, role)."""
    name = managed.role
    with aws_errors(f"deleting IAM role {name}", tolerate={"NoSuchEntity"}):
        for profile, _ in managed.profiles:
            iam.remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=name)
            iam.delete_instance_profile(InstanceProfileName=profile)
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        iam.delete_role(RoleName=name)


def remove_made(iam, profile: Profile) -> None:
    """Delete the role and instance profile a failed launch made (``profile.role_created``): the
    profile is named after the role, and nothing else used a role made seconds ago. Each step
    tolerates what is already gone. The order is DeleteRole's: out of the profile, the profile,
    inline policies, the role (https://docs.aws.amazon.com/boto3/latest/reference/services/iam/role/delete.html).
    A profile held by an instance being terminated may go: IAM does not refuse that, it only breaks
    the instance's access, and that instance is ending."""
    role = profile.role
    steps = [
        (
            "removing",
            iam.remove_role_from_instance_profile,
            {"InstanceProfileName": profile.name, "RoleName": role},
        ),
        ("deleting", iam.delete_instance_profile, {"InstanceProfileName": profile.name}),
    ]
    for doing, call, kwargs in steps:
        with aws_errors(f"{doing} instance profile {profile.name}", tolerate={"NoSuchEntity"}):
            call(**kwargs)
    with aws_errors(f"deleting IAM role {role}", tolerate={"NoSuchEntity"}):
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=policy)
        iam.delete_role(RoleName=role)


def widen_for_instance(
    ec2, iam, instance_id: str, want: Iterable[Grant], caller_arn: str, out: Callable[[str], None] = print
) -> list[Grant]:
    """Before a run starts on ``instance_id``: make its spotrun role reach ``want`` (what was
    added). A profile spotrun did not make is the user's to manage; no profile at all is said."""
    want = s3scope.minimal(want)
    if not want:
        return []
    with aws_errors(f"reading {instance_id}'s instance profile", tolerate={"InvalidInstanceID.NotFound"}):
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        raw = [i for r in reservations for i in r["Instances"]]
    profile_arn = raw[0].get("IamInstanceProfile", {}).get("Arn") if raw else None
    if not profile_arn:
        if raw:
            out(
                f"note: {instance_id} has no instance profile, so the run cannot reach "
                f"{', '.join(g.uri for g in want)}; relaunch with `iam_instance_profile: auto`"
            )
        return []
    role = managed_role_of(iam, profile_arn, caller_arn)
    if role is None:
        return []
    return widen(iam, role, want, caller_arn, out)
