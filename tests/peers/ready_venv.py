"""A machine spotrun has set up before: its venv already made and verified.

Most journeys are about what happens after setup. A fresh setup with the stand-in python still
imports torch once to verify it (about 2.7 CPU-s), and the suite's hosts did that some fifty times
for nothing (49 in one run, counted by a process sampler). So a host starts with the venv that one
setup made for the whole run (tests/peers/once.py), copied in: what an instance that
spotrun set up before looks like (an adopted lab machine, a stopped instance started again).
`scripts/setup_instance.sh` then takes its own "already set up" path, as on every second `fab setup`.

The first setup is still exercised end to end: by tests/remote/test_setup_script.py, by
tests/e2e/test_journey.py (a plain sshd host), by every replacement instance (the cluster and
detached kits wipe the node's folder, as a new disk is empty) and by the tests marked
``fresh_setup`` (the smoke), whose hosts start empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers.once import made_once

REPO = Path(__file__).resolve().parents[2]
# What the tests give `fab setup --python` / `setup_python`: the marker's hash covers it.
STAND_IN_PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="session")
def ready_venv(tmp_path_factory) -> Callable[[Path], None]:
    """seed(remote_dir): put a venv that setup_instance.sh made and verified into remote_dir."""
    template = made_once(tmp_path_factory, "ready-venv", _set_up) / "remote"

    def seed(remote_dir: Path) -> None:
        shutil.copytree(template / "venv", Path(remote_dir) / "venv", symlinks=True)

    return seed


def wants_fresh_setup(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("fresh_setup") is not None


def _set_up(folder: Path) -> None:
    template = folder / "remote"
    (template / "code").mkdir(parents=True)
    shutil.copy(REPO / "requirements.lock", template / "code" / "requirements.lock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTRUN_")}
    env.update(SPOTRUN_SETUP_PYTHON=STAND_IN_PYTHON, SPOTRUN_REQUIRE_GPU="0")
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_instance.sh"), str(template)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
