"""The lifecycle fab tasks in-process (and `fab` itself as a subprocess for the CLI contract)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from ec2 import registry, status
from ec2.cloud import instances
from ec2.cloud.instances import InstanceInfo
from ec2.remote import sshconfig, startrun
from tasks import lifecycle as t

REPO = Path(__file__).resolve().parents[2]
SETS = ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]", "instance_types=[g5.xlarge]", "zones=[us-east-1a]"]


def _launch(name: str) -> None:
    t.launch(Context(), name=name, no_wait=True, set_=SETS)


def test_status_orphans_and_missing_entries(home, ec2_client, dlami, capsys):
    _launch("exp1")
    _launch("exp2")
    # exp2's local entry is lost (another laptop launched it, or the registry was deleted) ...
    registry.remove("exp2")
    # ... and a registry entry points at an instance that no longer exists.
    registry.put(
        registry.MachineRecord(
            name="old", host="192.0.2.1", instance_id="i-0123456789abcdef0", region="us-east-1"
        )
    )
    capsys.readouterr()
    t.status(Context(), no_runs=True, set_=SETS)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("exp")}
    assert set(lines) == {"exp1", "exp2"}
    assert "g5.xlarge" in lines["exp1"] and "us-east-1a" in lines["exp1"] and "spot" in lines["exp1"]
    assert "running" in lines["exp1"] and "not in registry" not in lines["exp1"]
    assert lines["exp2"].rstrip().endswith("<- not in registry")
    assert "note: exp2 (i-" in out and "note: registry entry old points at i-0123456789abcdef0" in out


def test_status_table_and_cost_rows(no_aws):
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    spot = InstanceInfo(
        "i-1",
        "exp1",
        "running",
        "g5.xlarge",
        "us-east-1a",
        "spot",
        "198.51.100.5",
        None,
        now - timedelta(hours=2),
    )
    demand = InstanceInfo(
        "i-2",
        "exp2",
        "running",
        "g4dn.xlarge",
        "us-east-1b",
        "on-demand",
        None,
        "10.0.0.9",
        now - timedelta(minutes=30),
    )
    history = {
        ("g5.xlarge", "us-east-1a"): [(now - timedelta(hours=3), 0.40), (now - timedelta(hours=1), 0.50)]
    }
    rows = status.build_rows([spot, demand], "us-east-1", history, {}, now)
    # 1 h at 0.40, then 1 h at 0.50; on-demand: half an hour at the table price (no AWS to ask
    # the Pricing API: the offline fallback, marked as an estimate).
    assert rows[0].price_now == 0.50 and rows[0].cost_so_far == pytest.approx(0.90)
    assert rows[1].estimate and rows[1].cost_so_far == pytest.approx(0.526 / 2)
    text = status.table(rows, now)
    assert text.splitlines()[0].split()[:4] == ["NAME", "ID", "TYPE", "ZONE"]
    cells = [re.split(r"\s{2,}", line) for line in text.splitlines()[1:]]
    assert cells[0] == [
        "exp1",
        "i-1",
        "g5.xlarge",
        "us-east-1a",
        "spot",
        "running",
        "198.51.100.5",
        "2h00m",
        "$0.50",
        "$0.90",
        "-",
        "<- not in registry",
    ]
    assert cells[1][6:10] == ["10.0.0.9", "0h30m", "$0.53*", "$0.26*"]


def test_terminate_by_name_then_all(home, ec2_client, dlami, capsys):
    for name in ("exp1", "exp2", "exp3"):
        _launch(name)
    assert set(sshconfig.entries()) == {"spotrun-exp1", "spotrun-exp2", "spotrun-exp3"}
    # No terminal to confirm on (pytest's stdin): refused, with the way out.
    with pytest.raises(Exit) as refused:
        t.terminate(Context(), name="exp1", set_=SETS)
    assert refused.value.code == 1 and "pass --yes" in capsys.readouterr().err
    assert len(instances.find_instances(ec2_client)) == 3

    t.terminate(Context(), name="exp1", yes=True, set_=SETS)
    assert "terminated exp1 (i-" in capsys.readouterr().out
    assert [i.name for i in instances.find_instances(ec2_client)] == ["exp2", "exp3"]
    assert set(registry.load_all()) == {"exp2", "exp3"} and "spotrun-exp1" not in sshconfig.entries()

    t.terminate(Context(), all_=True, yes=True, set_=SETS)
    assert instances.find_instances(ec2_client) == []
    assert registry.load_all() == {} and sshconfig.entries() == {}

    with pytest.raises(Exit) as missing:
        t.terminate(Context(), name="exp1", yes=True, set_=SETS)
    assert "no live spotrun instance named 'exp1'" in capsys.readouterr().err and missing.value.code == 1


def test_cleanup_removes_group_and_pair_only_when_unused(home, ec2_client, dlami, capsys):
    _launch("exp1")
    capsys.readouterr()
    t.cleanup(Context(), set_=SETS)
    out = capsys.readouterr().out
    assert "kept security group" in out and "kept key pair 'spotrun': used by i-" in out
    t.terminate(Context(), name="exp1", yes=True, set_=SETS)
    t.cleanup(Context(), set_=SETS)
    out = capsys.readouterr().out
    assert "deleted security group spotrun-ssh" in out and "deleted key pair 'spotrun'" in out
    assert "kept " in out and (home / ".ssh" / "spotrun.pem").exists()
    assert ec2_client.describe_key_pairs()["KeyPairs"] == []
    # A second run finds nothing to do; --yes would also have removed the now useless .pem.
    t.cleanup(Context(), yes=True, set_=SETS)
    assert "no key pair 'spotrun'" in capsys.readouterr().out


def test_allow_my_ip_replaces_the_old_rule(home, ec2_client, checkip, capsys):
    t.allow_my_ip(Context(), set_=["ssh_cidr=203.0.113.7/32"])
    t.allow_my_ip(Context())  # ssh_cidr: auto → the loopback checkip answer
    out = capsys.readouterr().out
    assert "revoked SSH from 203.0.113.7/32" in out and f"SSH allowed from {checkip}/32" in out
    group = ec2_client.describe_security_groups(GroupNames=["spotrun-ssh"])["SecurityGroups"][0]
    assert [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]] == [f"{checkip}/32"]


def _fab(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "fab"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_fab_list_and_one_line_errors(home, aws_env):
    listing = _fab("--list").stdout
    for name in (
        "launch",
        "status",
        "terminate",
        "cleanup",
        "allow-my-ip",
        "setup",
        "sync",
        "train",
        "logs",
        "attach",
        "ssh",
        "run-cmd",
        "download",
        "gpu",
        "adopt",
        "forget",
    ):
        assert f"\n  {name} " in listing, name
    import os

    bad = _fab("launch", "--set", "region=us-east-9", env=os.environ.copy())
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: unknown AWS region 'us-east-9'") and bad.stderr.count("\n") == 1
    typo = _fab("status", "--set", "instance_type=g5.xlarge", env=os.environ.copy())
    assert (
        typo.returncode == 2
        and typo.stderr
        == "error: --set 'instance_type=g5.xlarge': unknown key instance_type; "
        "remove it or check its spelling\n"
    )


def test_region_from_aws_region_alone(home, ec2_client):
    import os

    env = {k: v for k, v in os.environ.items() if k != "AWS_DEFAULT_REGION"}
    env["AWS_REGION"] = "us-east-1"
    proc = _fab("status", "--no-runs", env=env)
    assert proc.returncode == 0 and proc.stdout == "no spotrun instances in us-east-1\n", proc.stderr


def _make_n(*args: str) -> list[str]:
    proc = subprocess.run(["make", "-s", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_makefile_aws_targets_pass_name_config_and_args():
    assert _make_n(
        "aws-train", "NAME=exp1", "CONFIG=my.yaml", "TRAIN_CONFIG=configs/demo.yaml", "ARGS=a=b c=d"
    ) == [
        '.venv/bin/fab train --name exp1 --config my.yaml --train-config configs/demo.yaml --args "a=b c=d"'
    ]
    assert _make_n("aws-status") == [".venv/bin/fab status --config configs/aws.yaml"]
    terminate = _make_n("aws-terminate", "NAME=exp1")
    assert terminate == [".venv/bin/fab terminate --name exp1 --config configs/aws.yaml "]  # asks
    assert _make_n("aws-terminate", "NAME=exp1", "YES=1")[0].endswith(" --yes")
    for target in (
        "aws-launch",
        "aws-setup",
        "aws-upload",
        "aws-logs",
        "aws-attach",
        "aws-ssh",
        "aws-download",
        "aws-gpu",
    ):
        (line,) = _make_n(target, "NAME=exp1", "CONFIG=my.yaml")
        assert line.startswith(".venv/bin/fab ") and "--name exp1 --config my.yaml" in line, line
    help_text = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True).stdout
    assert "aws-terminate" in help_text and "aws-train" in help_text


def test_status_shows_each_machines_run_state(sshd, ec2_client, dlami, capsys):
    """Four launched machines behind the real sshd (through a ProxyCommand), one per run state."""
    from ec2.remote import runs
    from ec2.remote.ssh import Machine
    from tests.peers.sshd import require_binaries

    require_binaries("nc")
    # One sshd (and one tmux server) serves all four, so only one can hold a live tmux run; the
    # others get the files a run leaves behind (the run lifecycle itself is tested in tests/remote,
    # and "none" there too: here busy's tmux session would be seen by a fifth machine).
    marks = {
        "busy": None,
        "done": "echo 0 > exit_code",
        "crashed": "echo 3 > exit_code",
        "spot": "echo '{}' > preempted",
    }
    for name, mark in marks.items():
        t.launch(
            Context(),
            name=name,
            no_wait=True,
            set_=[
                *SETS,
                f"ssh_proxy_command=nc 127.0.0.1 {sshd.port}",
                f"ssh_user={sshd.user}",
                f"remote_dir={sshd.root / 'remote' / name}",
            ],
        )
        record = registry.get(name)
        if name == "busy":
            sshd.authorize(record.key_path)  # the key pair launch created, shared by all four
            # Long enough to outlive the other three launches on a loaded machine (60 s did not once);
            # the sshd fixture kills its tmux server at teardown.
            startrun.start(
                startrun.Ssh(Machine(record)),
                record.remote_dir,
                startrun.RunSpec("train", "sleep 600", watch=False),
            )
        else:
            rdir = runs.run_dir(record.remote_dir, "train")
            Machine(record).run(f"mkdir -p {rdir} && cd {rdir} && {mark}")
    capsys.readouterr()
    t.status(Context(), set_=SETS)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("NAME"))
    rows = {line.split()[0]: line for line in lines if line.split()[:1] and line.split()[0] in marks}
    # Columns are aligned: every value starts under its header.
    run_col, cost_col = header.index("RUN"), header.index("COST")
    assert {n: row[run_col:].split()[0] for n, row in rows.items()} == {
        "busy": "running",
        "done": "finished(0)",
        "crashed": "finished(3)",
        "spot": "preempted",
    }
    assert all(row[cost_col] == "$" for row in rows.values())


def test_status_groups_a_clusters_nodes():
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def info(iid, name, tags=()):
        return InstanceInfo(
            iid, name, "running", "g5.12xlarge", "us-east-1a", "spot", None, None, now, tags=tags
        )

    found = [
        info("i-1", "job-1", (("spotrun:cluster", "job"), ("spotrun:node", "1"))),
        info("i-2", "solo"),
        info("i-3", "job-0", (("spotrun:cluster", "job"), ("spotrun:node", "0"))),
    ]
    rows = status.build_rows(found, "us-east-1", {}, {}, now)
    names = [line.split("  ")[0] for line in status.table(rows, now).splitlines()[1:]]
    assert names == ["job-0 [job node 0]", "job-1 [job node 1]", "solo"]
