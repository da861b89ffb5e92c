"""IAM's eventual consistency in the stand-in: an instance profile created (or given its role)
during a test is refused by EC2 and Auto Scaling for its first `lag_s` seconds, as AWS does while
the change propagates, with the error text each API documents for a profile it cannot see:

- RunInstances: InvalidParameterValue "Value (NAME) for parameter iamInstanceProfile.name is
  invalid. Invalid IAM Instance Profile name" (".arn ... Invalid IAM Instance Profile ARN" for an ARN)
- CreateAutoScalingGroup / UpdateAutoScalingGroup with a launch template naming the profile:
  ValidationError "You must use a valid fully-formed launch template. Value (NAME) for parameter
  iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"

https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html#troubleshoot_general_eventual-consistency
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_switch-role-ec2_instance-profiles.html

SPOTRUN_TEST_IAM_LAG_S sets the lag (default 2 s: every create-then-use path meets it at least
once, and the suite stays fast); 0 turns it off.
"""

from __future__ import annotations

import os
import threading
import time

from tests.peers import aws_rules
from tests.peers.aws_rules import Call

GROUP_ACTIONS = ("CreateAutoScalingGroup", "UpdateAutoScalingGroup")
DEFAULT_LAG_S = float(os.environ.get("SPOTRUN_TEST_IAM_LAG_S", "2"))


class IamLag:
    def __init__(self, lag_s: float = DEFAULT_LAG_S):
        self.lag_s = lag_s
        self._born: dict[str, float] = {}  # instance profile (lower case) → when it last changed
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._born.clear()

    def settle(self) -> None:
        """Every profile made so far has propagated: for a test's setup that stands for what existed
        long before the story it tells (a team's own profile, made last week)."""
        with self._lock:
            self._born.clear()

    def note(self, call: Call) -> None:
        """After IAM accepted ``call``: a new profile, or a role newly in one, starts propagating."""
        if call.service == "iam" and call.action in ("CreateInstanceProfile", "AddRoleToInstanceProfile"):
            with self._lock:
                self._born[call.params.get("InstanceProfileName", "").lower()] = time.monotonic()

    def _young(self, spec: dict | None) -> tuple[str, str] | None:
        """(value, field) of a profile spec still propagating: ("NAME", "name") or ("ARN", "arn")."""
        if not spec:
            return None
        value, field = (spec["Arn"], "arn") if spec.get("Arn") else (spec.get("Name", ""), "name")
        name = value.rsplit("/", 1)[-1].lower()
        with self._lock:
            born = self._born.get(name)
        if born is None or time.monotonic() - born >= self.lag_s:
            return None
        return value, field

    def refusal(self, call: Call) -> tuple[str, str] | None:
        """(code, message) while ``call`` uses a profile that has not propagated yet."""
        if not self.lag_s:
            return None
        if call.service == "ec2" and call.action == "RunInstances":
            young = self._young(call.params.get("IamInstanceProfile"))
            if young:
                value, field = young
                return "InvalidParameterValue", _invalid(value, field)
        if call.service == "autoscaling" and call.action in (
            "CreateAutoScalingGroup",
            "UpdateAutoScalingGroup",
        ):
            spec = aws_rules.group_template(call)
            if spec:
                young = self._young(aws_rules._template_data(call, spec).get("IamInstanceProfile"))
                if young:
                    value, field = young
                    return (
                        "ValidationError",
                        "You must use a valid fully-formed launch template. " + _invalid(value, field),
                    )
        return None


def _invalid(value: str, field: str) -> str:
    kind = "ARN" if field == "arn" else "name"
    return (
        f"Value ({value}) for parameter iamInstanceProfile.{field} is invalid. "
        f"Invalid IAM Instance Profile {kind}"
    )
