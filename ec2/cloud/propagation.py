"""IAM is eventually consistent: a role or instance profile made seconds ago may not be visible to
EC2 or Auto Scaling yet, and they refuse it as if it did not exist. Every create-then-use path
(role → profile → RunInstances, profile → launch template → CreateAutoScalingGroup /
UpdateAutoScalingGroup) goes through `retry_while_propagating`: a bounded retry that says what it
waits for.

https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html#troubleshoot_general_eventual-consistency
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_switch-role-ec2_instance-profiles.html
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import botocore.exceptions

from common.aws import error_code

# Between tries; about 45 s in all, past which a profile is wrong rather than propagating.
DELAYS_S = (1, 2, 4, 8, 15, 15)

T = TypeVar("T")


def profile_not_visible(error: botocore.exceptions.ClientError) -> bool:
    """EC2's refusal (InvalidParameterValue "... iamInstanceProfile.name is invalid. Invalid IAM
    Instance Profile name") and Auto Scaling's (ValidationError "You must use a valid fully-formed
    launch template. ... Invalid IAM Instance Profile name") of a profile it cannot see."""
    message = error.response.get("Error", {}).get("Message", "").lower()
    return error_code(error) in ("InvalidParameterValue", "ValidationError") and (
        "invalid iam instance profile" in message
    )


def retry_while_propagating(
    call: Callable[[], T],
    who: str,
    profile: str,
    out: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    refused: Callable[[botocore.exceptions.ClientError], bool] = profile_not_visible,
    what: str = "instance profile",
) -> T:
    """``call()``; while ``who`` (e.g. "EC2") refuses ``profile`` as unknown, wait and retry,
    within DELAYS_S. Any other error is raised; so is the refusal after the last try, its message
    saying how long it was waited for. ``refused`` tells a not-yet-visible refusal (EC2's and Auto
    Scaling's by default); ``what`` names the IAM entity in the lines it prints (a role for FIS)."""
    for delay in (*DELAYS_S, None):
        try:
            return call()
        except botocore.exceptions.ClientError as e:
            if not refused(e):
                raise
            if delay is None:
                error = e.response.setdefault("Error", {})
                error["Message"] = (
                    f"{error.get('Message', '')} (still refused after waiting {sum(DELAYS_S):g} s for IAM "
                    f"to propagate {what} {profile}; check that it exists"
                    + (" and holds a role)" if what == "instance profile" else ")")
                )
                raise
            out(f"      {who} does not see {what} {profile} yet (IAM propagates); retry in {delay} s")
            sleep(delay)
    raise AssertionError("unreachable")
