"""What a run on the instance is told about AWS: the region the instance was launched in (for
`fab run` as for `fab train`), which may have come from AWS_REGION on the laptop rather than from
the config; and no data-URI variable nobody reads (the data location is dataset.dataset_dir)."""

from __future__ import annotations

import os
import sys

import pytest
from invoke import Context
from invoke.exceptions import Exit

from ec2.journey.stages import Plan, run_env
from ec2.registry import MachineRecord
from ec2.remote import runs
from ec2.remote.ssh import Machine
from tasks import remote


def _machine(region: str | None) -> Machine:
    return Machine(
        MachineRecord(name="job", host="203.0.113.7", port=22, user="u", key_path="/k", region=region)
    )


def test_fab_run_tells_the_run_the_instances_region():
    # fab run's plan names no region (the config's may be empty, the laptop's AWS_REGION unknown
    # to the instance); each attempt adds the region its instance was launched in.
    plan = Plan(command="python -m ml.train", env={"EXTRA": "1"})
    assert run_env(_machine("eu-west-3"), plan) == {
        "EXTRA": "1",
        "AWS_REGION": "eu-west-3",
        "AWS_DEFAULT_REGION": "eu-west-3",
    }
    line = runs.start_command("~/spotrun", "train", plan.command, env=run_env(_machine("ap-south-1"), plan))
    assert "export AWS_DEFAULT_REGION=ap-south-1; export AWS_REGION=ap-south-1;" in line


def test_data_uri_with_a_custom_command_is_refused(capsys):
    with pytest.raises(Exit):
        remote.train(Context(), name="job", cmd="python my.py", data_uri="s3://bucket/data")
    assert "--data-uri sets the trainer's dataset.dataset_dir" in capsys.readouterr().err


def test_fab_run_stops_on_an_unusable_rsync_before_launching(tmp_path, monkeypatch, capsys):
    """No instance is paid for when the first sync could not work: the check comes before the
    config is even read (no AWS peer here; reaching AWS would fail otherwise)."""
    from tasks import managed
    from tests.peers import fake_rsync

    fake_rsync.install(tmp_path / "bin", "rsync-2.6.3", sys.executable)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(Exit):
        managed.run(Context(), name="job", config=str(tmp_path / "no-such.yaml"))
    assert "rsync 3.1+ needed: `brew install rsync` (found rsync 2.6.3" in capsys.readouterr().err
    assert fake_rsync.calls(tmp_path / "bin") == [["--version"]]
