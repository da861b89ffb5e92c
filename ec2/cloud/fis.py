"""A real spot interruption of one chosen instance, sent by AWS Fault Injection Service (FIS): the
experiment role FIS needs, an experiment template aimed at that instance by id, the experiment
started and followed. `fab rehearse` (ec2/journey/rehearse.py) uses it.

- The action is `aws:ec2:send-spot-instance-interruptions` on resource type
  `aws:ec2:spot-instance`, with `durationBeforeInterruption` (PT2M: the two minutes a real notice
  gives); it needs `ec2:SendSpotInstanceInterruptions` and `ec2:DescribeInstances`
  (https://docs.aws.amazon.com/fis/latest/userguide/fis-actions-reference.html#ec2-actions-reference).
- FIS acts through a role that trusts `fis.amazonaws.com`
  (https://docs.aws.amazon.com/fis/latest/userguide/getting-started-iam-service-role.html). spotrun's
  one per region, under /spotrun/ and tagged like its instance roles so `fab cleanup` deletes it,
  may interrupt only instances carrying spotrun's name tag.
- Initiating a Spot Instance interruption "is supported in all AWS Regions except Asia Pacific
  (Jakarta), Asia Pacific (Osaka), China (Beijing), China (Ningxia), and Middle East (UAE)"
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/initiate-a-spot-instance-interruption.html).
- Experiment states: pending, initiating, running, completed, stopping, stopped, failed, cancelled
  (https://docs.aws.amazon.com/fis/latest/APIReference/API_ExperimentState.html).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from common.aws import aws_errors, error_code
from ec2.cloud import iam
from ec2.cloud.instances import NAME_TAG
from ec2.cloud.propagation import retry_while_propagating
from ec2.errors import AwsError, ToolkitError

ACTION_ID = "aws:ec2:send-spot-instance-interruptions"
RESOURCE_TYPE = "aws:ec2:spot-instance"
NOTICE = "PT2M"  # ISO 8601, as the FIS API takes it: a real notice's two minutes
UNSUPPORTED_REGIONS = {
    "ap-southeast-3": "Asia Pacific (Jakarta)",
    "ap-northeast-3": "Asia Pacific (Osaka)",
    "cn-north-1": "China (Beijing)",
    "cn-northwest-1": "China (Ningxia)",
    "me-central-1": "Middle East (UAE)",
}
REGIONS_DOC = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/initiate-a-spot-instance-interruption.html"
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "fis.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
POLICY_NAME = "spotrun-fis"
# "$0.10 per action-minute for all regions except AWS GovCloud"; an action's duration is "rounded
# to the nearest minute" (https://aws.amazon.com/fis/pricing/).
USD_PER_ACTION_MINUTE = 0.10
ENDED = ("completed", "stopped", "failed", "cancelled")


class RehearsalRefused(ToolkitError):
    """The run cannot be rehearsed as asked: the message says why and what would do."""


def refuse_region(region: str) -> None:
    where = UNSUPPORTED_REGIONS.get(region)
    if where:
        raise RehearsalRefused(
            f"AWS FIS cannot interrupt spot instances in {region} ({where}; {REGIONS_DOC}): "
            "rehearse a run in another region"
        )


def role_name(region: str) -> str:
    return f"spotrun-fis-{region}"


def role_policy(partition: str, account: str, region: str) -> dict:
    """Interrupt spotrun's instances of this region (those with its name tag), nothing else.
    DescribeInstances takes no resource (the FIS action needs it to resolve its target)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "InterruptSpotrunInstances",
                "Effect": "Allow",
                "Action": "ec2:SendSpotInstanceInterruptions",
                "Resource": f"arn:{partition}:ec2:{region}:{account}:instance/*",
                "Condition": {"Null": {f"aws:ResourceTag/{NAME_TAG}": "false"}},
            },
            {
                "Sid": "DescribeTargets",
                "Effect": "Allow",
                "Action": "ec2:DescribeInstances",
                "Resource": "*",
            },
        ],
    }


@dataclass(frozen=True)
class Role:
    name: str
    arn: str
    created: bool


def ensure_role(client, region: str, caller_arn: str, out: Callable[[str], None] = print) -> Role:
    """spotrun's FIS experiment role for ``region``, made once (its policy set on every call, so
    a role made by an older spotrun gets today's)."""
    name = role_name(region)
    reading = f"reading IAM role {name}"
    got = iam._call(reading, caller_arn, client.get_role, tolerate={"NoSuchEntity"}, RoleName=name)
    created = got is None
    if created:
        got = iam._call(
            f"creating IAM role {name}",
            caller_arn,
            client.create_role,
            tolerate={"EntityAlreadyExists"},
            Path=iam.PATH,
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"spotrun: lets AWS FIS send spot interruptions to spotrun's instances in {region}",
            Tags=iam._tags("fis", region, caller_arn),
        ) or iam._call(reading, caller_arn, client.get_role, RoleName=name)
    document = role_policy(iam.partition_of(caller_arn), iam.account_of(caller_arn), region)
    iam._call(
        f"setting {name}'s policy",
        caller_arn,
        client.put_role_policy,
        RoleName=name,
        PolicyName=POLICY_NAME,
        PolicyDocument=json.dumps(document),
    )
    made = "created" if created else "using"
    out(f"FIS role: {made} {name} (may interrupt spotrun's instances in {region} only)")
    return Role(name, got["Role"]["Arn"], created)


def instance_arn(caller_arn: str, region: str, instance_id: str) -> str:
    return (
        f"arn:{iam.partition_of(caller_arn)}:ec2:{region}:{iam.account_of(caller_arn)}:instance/{instance_id}"
    )


def template_request(target_arn: str, role_arn: str, run_name: str) -> dict:
    """CreateExperimentTemplate's arguments: one target, the instance by id; one action; no stop
    condition (the experiment is one notice and its interruption)."""
    return {
        "description": f"spotrun rehearse {run_name}: interrupt {target_arn.rsplit('/', 1)[-1]}",
        "targets": {
            "SpotInstance": {
                "resourceType": RESOURCE_TYPE,
                "resourceArns": [target_arn],
                "selectionMode": "ALL",
            }
        },
        "actions": {
            "interrupt": {
                "actionId": ACTION_ID,
                "parameters": {"durationBeforeInterruption": NOTICE},
                "targets": {"SpotInstances": "SpotInstance"},
            }
        },
        "stopConditions": [{"source": "none"}],
        "roleArn": role_arn,
        "tags": {"spotrun:managed": "true", NAME_TAG: run_name},
    }


def role_not_assumable(error: botocore.exceptions.ClientError) -> bool:
    """FIS refusing a role IAM has not propagated to it yet (a ValidationException about the role;
    the exact text is not documented, so any mention of assuming the role counts)."""
    message = error.response.get("Error", {}).get("Message", "").lower()
    return error_code(error) == "ValidationException" and "role" in message and "assum" in message


@dataclass(frozen=True)
class Experiment:
    template_id: str
    experiment_id: str
    # Epoch seconds StartExperiment was called: the earliest the notice can come (FIS may send it
    # before the call has returned).
    started_at: float


def start(
    client,
    target_arn: str,
    role: Role,
    run_name: str,
    out: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> Experiment:
    """Create the template and start the experiment (retrying while FIS cannot assume a new role)."""
    with aws_errors("creating the FIS experiment template"):
        template = client.create_experiment_template(**template_request(target_arn, role.arn, run_name))
    template_id = template["experimentTemplate"]["id"]
    instance_id = target_arn.rsplit("/", 1)[-1]
    out(f"FIS experiment template {template_id}: {ACTION_ID} on {instance_id}, notice {NOTICE}")

    asked = [0.0]

    def go():
        asked[0] = time.time()  # the try that starts it (IAM propagation may refuse earlier ones)
        return client.start_experiment(experimentTemplateId=template_id, tags={"spotrun:managed": "true"})

    try:
        started = retry_while_propagating(
            go, "FIS", role.name, out, sleep, refused=role_not_assumable, what="role"
        )
    except BaseException as e:  # refused, or a Ctrl-C while IAM propagates: nothing runs from it
        delete_template(client, template_id)
        if isinstance(e, botocore.exceptions.ClientError):
            raise AwsError(f"starting the FIS experiment: {e}", error_code(e)) from None
        raise
    experiment_id = started["experiment"]["id"]
    out(f"FIS experiment {experiment_id} started")
    return Experiment(template_id, experiment_id, asked[0])


def state(client, experiment_id: str) -> tuple[str, str]:
    """(status, reason) of the experiment now."""
    with aws_errors(f"reading FIS experiment {experiment_id}"):
        got = client.get_experiment(id=experiment_id)["experiment"].get("state", {})
    return got.get("status", "unknown"), got.get("reason", "")


def wait_for(
    client,
    experiment_id: str,
    wanted: tuple[str, ...],
    budget_s: float,
    out: Callable[[str], None] = print,
    poll_s: float = 5.0,
) -> str:
    """Until the experiment is in one of ``wanted`` (or has ended), within ``budget_s``; says what it
    waits for. A failed, stopped or cancelled experiment is raised with FIS's reason."""
    out(f"waiting up to {budget_s:g} s for FIS experiment {experiment_id} to be {' or '.join(wanted)}")
    deadline = time.monotonic() + budget_s
    while True:
        status, reason = state(client, experiment_id)
        if status in wanted:
            return status
        if status in ENDED:
            raise AwsError(
                f"FIS experiment {experiment_id} {status}: {reason or 'no reason given'}; "
                "see it in the FIS console (Experiments)",
                status,
            )
        if time.monotonic() > deadline:
            raise AwsError(
                f"FIS experiment {experiment_id} is still {status} after {budget_s:g} s; "
                f"see it in the FIS console, or `aws fis get-experiment --id {experiment_id}`",
                status,
            )
        time.sleep(poll_s)


def action_minutes(seconds: float) -> int:
    """The minutes FIS bills for one action that ran ``seconds`` (as this laptop saw it: the poll's
    delay makes it an upper bound), at least one."""
    return max(round(seconds / 60), 1)


def delete_template(client, template_id: str) -> None:
    """The template is one rehearsal's: it goes when the rehearsal ends (the role stays)."""
    with aws_errors(
        f"deleting FIS experiment template {template_id}", tolerate={"ResourceNotFoundException"}
    ):
        client.delete_experiment_template(id=template_id)
