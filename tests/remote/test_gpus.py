"""One process per GPU: the count from `nvidia-smi -L`, `--gpus`, the torchrun command line, the
watcher's `--ranks`, and the GPU count in `fab status` and the `fab run` summary (pure functions)."""

from __future__ import annotations

import pytest

from common.errors import ToolkitError
from ec2.journey import history, report
from ec2.journey.stages import Plan, watcher_args
from ec2.remote import gpu, runs
from ec2.remote.trainrun import train_command
from ec2.remote.trainrun import watcher_args as trainrun_watcher_args

# nvidia-smi -L on a g5.12xlarge (format from NVIDIA's nvidia-smi documentation).
FOUR = "\n".join(f"GPU {i}: NVIDIA A10G (UUID: GPU-{i}a2b3c4d-0000-1111-2222-333344445555)" for i in range(4))


def test_count_from_nvidia_smi_list():
    assert gpu.parse_count(FOUR + "\n") == 4
    assert gpu.parse_count("") == 0  # no driver / no nvidia-smi: the command prints nothing
    assert gpu.parse_count("NVIDIA-SMI has failed because it couldn't communicate with the driver") == 0


def test_processes_per_machine():
    assert gpu.processes_for(4, None) == 4
    assert gpu.processes_for(0, None) == 1  # the CPU: one process, as before
    assert gpu.processes_for(4, 1) == 1  # --gpus 1: today's single process
    assert gpu.processes_for(4, 2) == 2
    with pytest.raises(ToolkitError, match=r"^--gpus 5 asked for, but the machine has 4 GPU\(s\)"):
        gpu.processes_for(4, 5)
    with pytest.raises(ToolkitError, match="has 0 GPU"):
        gpu.processes_for(0, 2)
    with pytest.raises(ToolkitError, match="not a GPU count"):
        gpu.processes_for(4, 0)


def test_torchrun_for_more_than_one_process_and_plain_python_for_one():
    one = train_command("~/spotrun", "configs/demo.yaml", ["seed=1"], 1)
    assert one == '"$HOME"/spotrun/venv/bin/python -m ml.train --config configs/demo.yaml seed=1'
    four = train_command("~/spotrun", "configs/demo.yaml", ["seed=1"], 4)
    assert four == (
        '"$HOME"/spotrun/venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 4 '
        "-m ml.train --config configs/demo.yaml seed=1"
    )


def test_the_watchers_ranks_come_from_the_machine_not_the_plan():
    assert "--ranks" not in trainrun_watcher_args("USR1", None, None)
    assert trainrun_watcher_args("USR1", None, None, ranks=4) == ["--signal", "USR1", "--ranks", "4"]
    # The plan's arguments are the same on every machine; startrun.line adds each machine's --ranks
    # (test_one_start_line_for_every_way_of_starting).
    plan = Plan(command="x", checkpoint_dir="s3://b/ckpt", imds_poll_s=5)
    assert watcher_args(plan, None)[:2] == ["--signal", "USR1"] and "--ranks" not in watcher_args(plan, None)


def test_run_records_its_gpus_and_status_shows_them():
    line = runs.start_command("~/spotrun", "exp", "x", gpus=4)
    assert 'echo 4 > "$HOME"/spotrun/runs/exp/gpus;' in line
    assert "gpus" not in runs.start_command("~/spotrun", "exp", "x")
    assert 'echo gpus $(cat "$HOME"/spotrun/runs/exp/gpus 2>/dev/null)' in runs.state_command(
        "~/spotrun", "exp"
    )
    assert str(runs.parse_state("running\ngpus 4\n")) == "running on 4 GPUs"
    assert str(runs.parse_state("finished 75\ngpus 2")) == "finished(75) on 2 GPUs"
    assert str(runs.parse_state("running\ngpus\n")) == "running"  # one process: no file
    assert str(runs.parse_state("preempted\ngpus 1")) == "preempted"


def test_summary_shows_each_attempts_gpus():
    a = history.Attempt(1, "i-1", "g5.12xlarge", "us-east-1a", "spot", outcome="finished", gpus=4)
    b = history.Attempt(2, "i-2", "c5.large", "us-east-1a", "spot", outcome="finished", gpus=0)
    lines = report.summary(history.RunHistory(name="job", status="finished", attempts=[a, b])).splitlines()
    assert "g5.12xlarge (4 GPUs)" in lines[1] and "c5.large (CPU)" in lines[2]


def test_torchrun_across_nodes_meets_at_node_0():
    from ec2.remote.trainrun import Rendezvous

    rdzv = Rendezvous(nodes=2, host="10.0.1.5", run_id="job-train", node=1)
    cmd = train_command("~/spotrun", "configs/demo.yaml", ["seed=1"], 4, rdzv)
    assert cmd == (
        '"$HOME"/spotrun/venv/bin/python -m torch.distributed.run --nnodes 2 --nproc_per_node 4 '
        "--rdzv_backend c10d --rdzv_endpoint 10.0.1.5:29400 --rdzv_id job-train --rdzv_conf is_host=0 "
        "--max_restarts 0 -m ml.train --config configs/demo.yaml seed=1"
    )
    node0 = train_command("~/spotrun", "c.yaml", [], 1, Rendezvous(2, "10.0.1.5", "job-train", 0))
    assert "--nproc_per_node 1" in node0 and "is_host=1" in node0


def test_a_multi_node_run_needs_s3_checkpoints_and_its_members(monkeypatch, capfd, tmp_path):
    from pathlib import Path

    from invoke import Context
    from invoke.exceptions import Exit

    from tasks import remote as t

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path))
    c = Context()
    with pytest.raises(Exit):
        t.train(c, name="job", nodes=2, train_config="configs/demo.yaml", args="checkpoint_dir=ckpt")
    err = capfd.readouterr().err
    assert err.startswith("error: a multi-node run keeps its checkpoints in S3")
    # The wording `fab run --nodes` uses too (common.checks): what is set now, and how to set it.
    assert "checkpoint_dir is ckpt: pass --args 'checkpoint_dir=s3://BUCKET/PREFIX'" in err
    with pytest.raises(Exit):
        t.train(c, name="job", nodes=2, train_config="configs/demo.yaml", args="checkpoint_dir=s3://bkt/c")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no machine named job-0, job-1 in the registry")


def test_one_start_line_for_every_way_of_starting():
    """ec2.remote.startrun builds the line once: the trainer per machine (torchrun when more than
    one process or across machines; the watcher's --ranks always), a plain command as it is."""
    from ec2.remote.startrun import RunSpec, line
    from ec2.remote.trainrun import Rendezvous

    trainer = RunSpec(
        "exp", train_config="configs/demo.yaml", overrides=("seed=1",), watcher_args=("--signal", "USR1")
    )
    two = line(trainer, "~/spotrun", 2)
    assert "--standalone --nproc_per_node 2" in two and "--signal USR1 --ranks 2" in two
    assert 'echo 2 > "$HOME"/spotrun/runs/exp/gpus;' in two
    one = line(trainer, "~/spotrun", 1)
    # One process, no torchrun: the watcher still waits for the trainer's handlers (--ranks 1).
    assert "torch.distributed.run" not in one and "--signal USR1 --ranks 1" in one
    node = line(trainer, "~/spotrun", 1, Rendezvous(2, "10.0.1.5", "job-train", 1))
    assert "--nnodes 2 --nproc_per_node 1" in node and "--ranks 1" in node
    plain = line(RunSpec("exp", command="sleep 5"), "~/spotrun", 1)
    assert "sleep 5" in plain and "/gpus" not in plain and "--ranks" not in plain
