"""The fab tasks themselves (called in-process) against the sshd fixture: what a user types."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from ec2.remote import runs
from ec2.remote.ssh import Machine
from tasks import remote as t

REPO = Path(__file__).resolve().parents[2]

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *query-gpu*) echo "0, GPU-aaa, NVIDIA A10G, 93, 20000, 23028, 64, 201.3" ;;
  *query-compute-apps*) echo "GPU-aaa, 999, python, 19800" ;;
esac
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A small project as the current folder (tasks work on `.`), with the setup script."""
    root = tmp_path / "proj"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "setup_instance.sh").write_text((REPO / "scripts" / "setup_instance.sh").read_text())
    (root / "requirements.lock").write_text("numpy==2.4.6\n")
    (root / "hello.py").write_text("print('hello from the instance')\n")
    monkeypatch.chdir(root)
    return root


def test_sync_train_logs_download_through_tasks(sshd, project, capfd):
    sshd.record(name="box", region="eu-west-1")
    c = Context()
    t.sync(c, name="box")
    assert "synced to box: 3 file(s)" in capfd.readouterr().out
    t.sync(c, name="box")
    assert "synced to box: 0 file(s)" in capfd.readouterr().out

    t.train(
        c,
        name="box",
        cmd="python3 hello.py; echo region=$AWS_REGION; mkdir -p o && echo x > o/f",
        no_watch=True,
    )
    assert "started run 'train' on box" in capfd.readouterr().out
    m = Machine(sshd.record(name="box", region="eu-west-1"))
    end = time.monotonic() + 15
    while runs.run_state(m, "train").state != "finished" and time.monotonic() < end:
        time.sleep(0.2)
    t.logs(c, name="box", no_follow=True)
    assert capfd.readouterr().out == "hello from the instance\nregion=eu-west-1\n"

    with pytest.raises(Exit) as exit_:
        t.train(c, name="box", cmd="true", no_watch=True)
    assert exit_.value.code != 0 and "already exists" in capfd.readouterr().err

    t.download(c, name="box", output_dir=f"{sshd.root}/remote/code/o")
    assert (project / "outputs" / "box" / "f").read_text() == "x\n"
    assert (project / "outputs" / "box" / "run" / "log").exists()


def test_logs_of_missing_run_is_one_line(sshd, project, capfd):
    sshd.record(name="box")
    with pytest.raises(Exit):
        t.logs(Context(), name="box", run="nope")
    err = capfd.readouterr().err
    assert err.startswith("error: no run named 'nope' on box") and err.count("\n") == 1


def test_setup_task_with_stand_in_env(sshd, project, capfd):
    sshd.record(name="box")
    c = Context()
    t.setup(c, name="box", python=str(REPO / ".venv/bin/python"), no_gpu=True)
    capfd.readouterr()
    t.setup(c, name="box", python=str(REPO / ".venv/bin/python"), no_gpu=True)
    assert "already set up" in capfd.readouterr().out


def test_gpu_summary_over_ssh(sshd, project, capfd):
    fake = sshd.bin_dir / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    sshd.record(name="box")
    t.gpu(Context(), name="box")
    out = capfd.readouterr().out
    assert "NVIDIA A10G" in out and "93%" in out and "20000 / 23028" in out and "pid 999" in out


def test_sync_gives_a_fresh_machine_the_downloaded_checkpoint_and_never_overwrites_one(sshd, project, capfd):
    """Checkpoints on the instance's disk: `fab download` kept the newest on the laptop; the next
    machine receives it on `fab sync`, where `resume=auto` finds it. A machine that already has one
    (the run went on) keeps its own."""
    (project / "train.yaml").write_text("output_dir: out\ncheckpoint_dir: out/checkpoint\n")
    saved = project / "outputs" / "box" / "checkpoint"
    saved.mkdir(parents=True)
    (saved / "last.pt").write_bytes(b"step 40")
    (saved / "args.yaml").write_text("seed: 10\n")
    sshd.record(name="box")
    remote_ckpt = sshd.root / "remote" / "code" / "out" / "checkpoint"

    t.sync(c := Context(), name="box", train_config="train.yaml")
    assert (remote_ckpt / "last.pt").read_bytes() == b"step 40"
    assert (remote_ckpt / "args.yaml").exists()
    assert "restored outputs/box/checkpoint/ to box:out/checkpoint (2 file(s))" in capfd.readouterr().out

    (remote_ckpt / "last.pt").write_bytes(b"step 90")
    t.sync(c, name="box", train_config="train.yaml")
    assert (remote_ckpt / "last.pt").read_bytes() == b"step 90"
    assert "restored" not in capfd.readouterr().out


def test_train_reads_each_config_once_and_builds_fab_runs_plan(sshd, monkeypatch, capfd):
    """`fab train` reads configs/aws.yaml and the trainer's config once each (it read them 4 and 3
    times), and starts what `fab run` would: the trainer, its output_dir recorded for download."""
    import common.config
    import ec2.config
    import ml.config

    reads: list[str] = []
    real = common.config.load_config

    def counting(cls, *args, **kwargs):
        reads.append(cls.__name__)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(ec2.config, "load_config", counting)
    monkeypatch.setattr(ml.config, "load_config", counting)
    monkeypatch.chdir(REPO)
    record = sshd.record(name="box")
    t.train(Context(), name="box", train_config="configs/demo.yaml", args="output_dir=trained_models/once")
    assert sorted(reads) == ["AwsConfig", "TrainConfig"]
    assert "started run 'train' on box" in capfd.readouterr().out
    rdir = Path(runs.run_dir(record.remote_dir, "train"))
    assert (rdir / "output_dir").read_text().strip() == "trained_models/once"
    assert (
        "-m ml.train --config configs/demo.yaml output_dir=trained_models/once"
        in (rdir / "command").read_text()
    )
