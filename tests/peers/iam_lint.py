"""`parliament` (an IAM policy linter: https://github.com/duo-labs/parliament) on the policies
spotrun writes: moto stores any document and evaluates no Resource or Condition, so a malformed
ARN, an action that does not exist, or a condition key the action does not take would reach a
real account unseen.

parliament 1.6.4 (the newest) still imports `pkg_resources`, which setuptools dropped (81+); it
only asks it for two files shipped inside the package, which importlib.resources finds as well.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import sys
import types


def _parliament():
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)
        sys.modules["pkg_resources"] = shim
    import parliament

    return parliament


def findings(document: dict | str, community: bool = True) -> list[tuple[str, str]]:
    """(issue, detail) for each finding parliament has on ``document``, its community auditors
    included (they are the ones that flag permissions management and privilege escalation)."""
    text = document if isinstance(document, str) else json.dumps(document)
    policy = _parliament().analyze_policy_string(text, include_community_auditors=community)
    return [(f.issue, json.dumps(f.detail, default=str)) for f in policy.findings]
