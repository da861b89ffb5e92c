"""The trainer runs on the instance without the launcher: ml/ and common/ import nothing from
ec2/ or tasks/ (read from the source, so a function-level import counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["ml", "common"])
def test_trainer_side_never_imports_the_launcher(package):
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in ("ec2", "tasks")
        )
        for path in (REPO / package).rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}
    assert any((REPO / package).rglob("*.py"))  # the walk found the package
