"""What a fresh account must hold, once, before spot instances and Auto Scaling groups work, as
`fab doctor` rows ((status, detail, fix), as ec2.cloud.s3check's are):

- the service-linked roles AWSServiceRoleForEC2Spot (the first spot request makes it) and
  AWSServiceRoleForAutoScaling (the first Auto Scaling group makes it, for `fab run --detach`):
  present, or the caller may create them (iam:CreateServiceLinkedRole, asked of IAM's policy
  simulator); otherwise that first use fails with AuthFailure.ServiceLinkedRoleCreationNotPermitted.
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/autoscaling-service-linked-role.html
- the account's default EBS key (spotrun's root volumes are encrypted with it): AWS managed
  (aws/ebs) is fine; a customer managed key must let the Auto Scaling service-linked role use it (a
  grant, or its key policy naming the role), or every instance the group launches is terminated at
  once ("Client.InternalError: Client error on launch").
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/key-policy-requirements-EBS-encryption.html
  https://docs.aws.amazon.com/ebs/latest/userguide/work-with-ebs-encr.html#encryption-by-default
"""

from __future__ import annotations

import json

from common.aws import AWS_FAILURES, error_code
from ec2.cloud import s3check

OK, FAIL, UNKNOWN = s3check.OK, s3check.FAIL, s3check.UNKNOWN
SPOT_ROLE = ("AWSServiceRoleForEC2Spot", "spot.amazonaws.com", "first spot launch")
AUTOSCALING_ROLE = ("AWSServiceRoleForAutoScaling", "autoscaling.amazonaws.com", "first `fab run --detach`")
# What the Auto Scaling service-linked role does with the key (the documented grant's operations).
KEY_OPERATIONS = (
    "Encrypt",
    "Decrypt",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "DescribeKey",
    "CreateGrant",
)


def _code(e: Exception) -> str:
    return error_code(e) if hasattr(e, "response") else type(e).__name__


def role_arn(partition: str, account: str, role: str, service: str) -> str:
    return f"arn:{partition}:iam::{account}:role/aws-service-role/{service}/{role}"


def service_linked_role(
    iam, principal: str | None, partition: str, account: str, role: str, service: str, use: str
) -> tuple[str, str, str]:
    """The role exists, or ``principal`` may create it (None: the account root, which may)."""
    try:
        iam.get_role(RoleName=role)
        return OK, f"{role} exists", ""
    except AWS_FAILURES as e:
        if _code(e) != "NoSuchEntity":
            return UNKNOWN, f"{role}: cannot read it ({_code(e)})", ""
    made_at = f"{role} does not exist yet; AWS makes it at the {use}"
    if principal is None:
        return OK, f"{made_at} (the account root may)", ""
    try:
        result = iam.simulate_principal_policy(
            PolicySourceArn=principal,
            ActionNames=["iam:CreateServiceLinkedRole"],
            ResourceArns=[role_arn(partition, account, role, service)],
            ContextEntries=[
                {
                    "ContextKeyName": "iam:AWSServiceName",
                    "ContextKeyValues": [service],
                    "ContextKeyType": "string",
                }
            ],
        )
    except AWS_FAILURES as e:
        return (
            UNKNOWN,
            f"{made_at}; cannot tell whether you may (iam:SimulatePrincipalPolicy: {_code(e)})",
            "",
        )
    if all(r["EvalDecision"] == "allowed" for r in result["EvaluationResults"]):
        return OK, f"{made_at} (you may: iam:CreateServiceLinkedRole)", ""
    return (
        FAIL,
        f"{made_at}, and you may not iam:CreateServiceLinkedRole: it would fail with "
        "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
        f"an admin runs once: aws iam create-service-linked-role --aws-service-name {service}",
    )


def _service_name(service: str) -> dict:
    """The condition key CreateServiceLinkedRole is evaluated with."""
    return {"ContextKeyName": "iam:AWSServiceName", "ContextKeyValues": [service], "ContextKeyType": "string"}


def default_ebs_key(ec2, kms, autoscaling_role: str) -> tuple[str, str, str]:
    """The account's default EBS key, which encrypted root volumes use: AWS managed, or customer
    managed with a grant (or key policy) for ``autoscaling_role`` (the service-linked role's ARN)."""
    try:
        key_id = ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
        meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    except AWS_FAILURES as e:
        return UNKNOWN, f"cannot read the default EBS key ({_code(e)})", ""
    if meta.get("KeyManager") == "AWS":
        return OK, f"{key_id} (AWS managed)", ""
    name = f"{key_id} (customer managed)"
    if meta.get("KeyState") != "Enabled":
        return (
            FAIL,
            f"{name} is {meta.get('KeyState')}: no encrypted volume can be made",
            "enable the key, or: aws ec2 reset-ebs-default-kms-key-id",
        )
    try:
        grants = kms.list_grants(KeyId=meta["KeyId"]).get("Grants", [])
        policy = kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default").get("Policy", "")
    except AWS_FAILURES as e:
        return UNKNOWN, f"{name}: cannot read its grants and policy ({_code(e)})", ""
    granted = any(
        g.get("GranteePrincipal") == autoscaling_role and set(KEY_OPERATIONS) <= set(g.get("Operations", []))
        for g in grants
    )
    if granted or _policy_names(policy, autoscaling_role):
        return OK, f"{name}, usable by Auto Scaling ({'a grant' if granted else 'its key policy'})", ""
    return (
        FAIL,
        f"{name}: the Auto Scaling service-linked role may not use it, so a detached run's instances "
        "are terminated at launch",
        f"aws kms create-grant --key-id {meta['Arn']} --grantee-principal {autoscaling_role} "
        f"--operations {' '.join(KEY_OPERATIONS)}",
    )


def _policy_names(policy: str, principal: str) -> bool:
    """The key policy allows ``principal`` by name (a statement of Effect Allow naming it)."""
    try:
        document = json.loads(policy) if policy else {}
    except ValueError:
        return False
    statements = document.get("Statement", [])
    for st in statements if isinstance(statements, list) else [statements]:
        if st.get("Effect") == "Allow" and principal in json.dumps(st.get("Principal", {})):
            return True
    return False
