"""`tasks/` is the face, not the brain (docs: architecture.md): it checks arguments, calls ec2/ and
prints. Checked on the source: no module in tasks/ imports boto3, botocore or common.aws (the
door to clients), and none calls an AWS API operation on a client itself: every name botocore's
service models give an operation of the services spotrun uses (`describe_launch_templates`,
`delete_key_pair`, ...) may appear in tasks/ only on an imported module (`instances.terminate_instances`
is ec2/'s function of that name), never on a client object."""

from __future__ import annotations

import ast
from pathlib import Path

import botocore.session
from botocore import xform_name

TASKS = Path(__file__).resolve().parents[1] / "tasks"
SERVICES = ("ec2", "iam", "s3", "autoscaling", "sts", "ssm", "service-quotas", "pricing", "fis")
FORBIDDEN_IMPORTS = ("boto3", "botocore", "common.aws", "s3fs")


def operations() -> set[str]:
    session = botocore.session.get_session()
    return {xform_name(op) for svc in SERVICES for op in session.get_service_model(svc).operation_names}


def problems(path: Path, ops: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    modules: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules.add((a.asname or a.name).split(".")[0])
                if a.name.startswith(FORBIDDEN_IMPORTS):
                    found.append(f"{path.name}:{node.lineno} imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                modules.add(a.asname or a.name)
                full = f"{node.module}.{a.name}"
                if node.module.startswith(FORBIDDEN_IMPORTS) or full.startswith(FORBIDDEN_IMPORTS):
                    found.append(f"{path.name}:{node.lineno} imports {full}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ops
            and not (isinstance(node.value, ast.Name) and node.value.id in modules)
        ):
            found.append(f"{path.name}:{node.lineno} calls the AWS operation {node.attr}")
    return found


def test_no_module_in_tasks_makes_aws_calls():
    ops = operations()
    assert "describe_launch_templates" in ops and "delete_key_pair" in ops
    found = [p for path in sorted(TASKS.glob("*.py")) for p in problems(path, ops)]
    assert found == [], "tasks/ must call ec2/, not AWS:\n" + "\n".join(found)
