"""`fab run` end to end against real peers: moto's server (EC2, S3), the sshd fixture standing in
for every instance moto launches (ssh_proxy_command: nc to its port), the loopback IMDS, the real
trainer in tmux. The test plays AWS: it marks the instance for interruption, then terminates it.
The journey every engine shares (a notice, a replacement resumed at the step, finished) is
tests/e2e/test_spot_journey.py; these are what only the attended engine does."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

from invoke import Context

from tasks import lifecycle
from tests.e2e.runkit import fab_run_process, launched_ids, live_instances, start_fab_run
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_failing_command_is_not_relaunched(cloud, tiny_dataset, tmp_path, capfd):
    ec2, config = cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tmp_path}/no-such-data",
        "num_training_batches=20",
        "output_dir=trained_models/bad",
        "checkpoint_dir=trained_models/bad/checkpoint",
    ]
    thread, result = start_fab_run(config, dest, args)
    thread.join(timeout=90)
    captured = capfd.readouterr()
    assert not thread.is_alive()
    assert result == {"exit": 1}, (result, captured.out[-2000:])
    assert "the command failed with exit 3 on attempt 1" in captured.err
    assert "a new instance would fail the same way, so none is launched" in captured.err
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "failed" and [a["outcome"] for a in history["attempts"]] == ["failed"]
    assert "dataset folder not found" in (dest / "run" / "log").read_text()  # the log came back
    assert len(launched_ids(ec2)) == 1 and live_instances(ec2) == []


def test_relaunch_retries_every_type_and_zone_once_all_were_interrupted(cloud, tmp_path, capsys):
    from ec2.config import load_aws_config
    from ec2.journey import Journey, Plan
    from ec2.journey.history import Attempt

    ec2, config = cloud
    cfg = load_aws_config(str(config), ["instance_types=[g5.xlarge]"])  # one type, one zone
    journey = Journey(cfg, "job", Plan(command="true"), outputs=tmp_path / "out", out=print)
    journey.exclude.add(("g5.xlarge", "us-east-1a"))  # it was interrupted there
    m = journey.provision(Attempt(2))
    assert "interrupted once; trying them all again" in capsys.readouterr().out
    assert (m.record.instance_type, m.record.zone) == ("g5.xlarge", "us-east-1a")
    assert [i["InstanceId"] for i in live_instances(ec2)] == [m.record.instance_id]


def checkpoint_step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["step"]


def test_vanished_instance_resumes_from_the_last_periodic_download_and_max_recoveries_holds(
    cloud, spot_host, tiny_dataset, tmp_path, capfd
):
    """Checkpoints on the instance's disk, no S3, and no notice: the instance just vanishes. Only
    `--download-every` has put a checkpoint on the laptop; the replacement must resume from it."""

    ec2, config = cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=5000",
        "batches_per_save=3",
        "output_dir=trained_models/pd",
        "checkpoint_dir=trained_models/pd/checkpoint",
    ]
    thread, result = start_fab_run(config, dest, args, max_recoveries=1, download_every=1)
    events = lambda: json.loads((dest / "run.json").read_text())["events"]  # noqa: E731
    local_ckpt = dest / "checkpoint" / "last.pt"
    wait_until(
        lambda: (
            local_ckpt.exists()
            and any(e["event"] == "downloaded" and e["what"] == "checkpoints" for e in events())
        ),
        90,
        "a periodic checkpoint download",
    )
    (first,) = live_instances(ec2)

    # The machine dies at once: its processes go (the trainer has no time to save), AWS lists it
    # terminated, and a replacement's disk would be empty (same sshd host here: wipe it).
    for sock in spot_host.tmux_tmpdir.glob("tmux-*/*"):
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
    ec2.terminate_instances(InstanceIds=[first["InstanceId"]])
    shutil.rmtree(spot_host.root / "remote" / "code" / "trained_models" / "pd" / "checkpoint")
    wait_until(lambda: any(e["event"] == "interrupted" for e in events()), 30, "fab run to notice")
    saved = checkpoint_step(local_ckpt)  # what the laptop holds: the last periodic download
    assert saved > 0

    resumed = wait_until(lambda: [e for e in events() if e["event"] == "resumed"], 90, "attempt 2 to resume")
    assert resumed == [{**resumed[0], "attempt": 2, "step": saved}]
    assert f"at step {saved}" in (spot_host.root / "remote" / "runs" / "train" / "log").read_text()
    (second,) = live_instances(ec2)
    ec2.terminate_instances(InstanceIds=[second["InstanceId"]])  # and again: one recovery only
    thread.join(timeout=60)
    captured = capfd.readouterr()
    assert not thread.is_alive()
    assert result == {"exit": 1}, (result, captured.out[-2000:])
    assert "interrupted: instance terminated" in captured.out
    assert "--max-recoveries is 1: giving up" in captured.err
    assert "`fab run` again resumes from it" in captured.err
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "gave-up" and [a["outcome"] for a in history["attempts"]] == ["lost", "lost"]
    a1, a2 = history["attempts"]
    assert a2["resumed_step"] == saved and history["steps_lost"][0] == a1["last_step"] - saved >= 0
    assert any(e["event"] == "checkpoint-restored" for e in history["events"])
    assert launched_ids(ec2) == {first["InstanceId"], second["InstanceId"]}  # no third instance
    assert "2 interruptions" in captured.out


def ctrl_c_once_watching(proc: subprocess.Popen, spot_host) -> tuple[str, str]:
    """Wait until the run trains, press Ctrl-C, and return fab's output; never leave fab behind."""
    log = spot_host.root / "remote" / "runs" / "train" / "log"

    def started() -> bool:
        assert proc.poll() is None, proc.communicate()
        return log.exists() and "Train batch 2:" in log.read_text()

    try:
        wait_until(started, 120, "training to start")
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_without_a_terminal_leaves_the_instance_and_says_how_to_stop_it(
    cloud, spot_host, tiny_dataset, tmp_path, capsys, monkeypatch
):
    ec2, config = cloud
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=5000",
        "output_dir=trained_models/cc",
        "checkpoint_dir=s3://spot-ckpt/cc/checkpoint",
    ]
    # Where `fab run` keeps the history by default (outputs/<name>), under tmp_path, for `fab status`.
    dest = tmp_path / "outputs" / "job"
    proc = fab_run_process(config, dest, args, stdin=subprocess.DEVNULL)
    out, err = ctrl_c_once_watching(proc, spot_host)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "[t]erminate" not in out  # no question without a terminal
    (live,) = live_instances(ec2)  # still running, as promised
    assert f"left {live['InstanceId']} running" in out and "`fab terminate --name job`" in out
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "interrupted" and history["attempts"][0]["outcome"] == "left-running"
    assert history["events"][-1] == {**history["events"][-1], "event": "ctrl-c", "decision": "left-running"}

    # `fab status` from the folder `fab run` ran in: the machine's run and its ledger so far.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    lifecycle.status(Context(), no_runs=True, config=str(config))
    shown = capsys.readouterr().out
    assert f"run job (outputs/job/run.json): attempt 1 left-running on {live['InstanceId']}" in shown, shown
    assert re.search(r"\n  ledger attempt 1: \$[\d.]+ on steps kept, \$0\.0000 lost \(recovery", shown), shown
    assert "\n  ledger total: $" in shown, shown


def test_ctrl_c_at_a_terminal_asks_and_terminates_on_t(cloud, spot_host, tiny_dataset, tmp_path):
    import os
    import pty

    ec2, config = cloud
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=5000",
        "output_dir=trained_models/ct",
        "checkpoint_dir=s3://spot-ckpt/ct/checkpoint",
    ]
    terminal, user_side = pty.openpty()  # stdin is a terminal: fab may ask
    try:
        proc = fab_run_process(config, tmp_path / "out", args, stdin=user_side)
        os.write(terminal, b"t\n")  # the answer waits in the terminal until fab reads it
        out, err = ctrl_c_once_watching(proc, spot_host)
    finally:
        os.close(user_side)
        os.close(terminal)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    (first,) = launched_ids(ec2)
    assert "[t]erminate / [l]eave running" in out and f"terminated {first}" in out
    assert live_instances(ec2) == []
    history = json.loads((tmp_path / "out" / "run.json").read_text())
    assert history["status"] == "interrupted" and history["attempts"][0]["outcome"] == "terminated-by-user"
    assert history["events"][-1]["decision"] == "terminated-by-user"


def test_an_error_while_watching_names_the_instance_left_running(
    cloud, spot_host, tiny_dataset, tmp_path, capfd
):
    """AWS refuses the laptop mid-run (credentials revoked: the documented UnauthorizedOperation,
    injected on the client the journey uses, since moto authorises everything). The run goes on on
    the instance, and fab says so: which instance, and how to pick it up or end it."""
    from common import aws
    from tests.peers.inject import answer, ec2_error

    ec2, config = cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=5000",
        "output_dir=trained_models/err",
        "checkpoint_dir=s3://spot-ckpt/err/checkpoint",
    ]
    log = spot_host.root / "remote" / "runs" / "train" / "log"
    thread, result = start_fab_run(config, dest, args)
    wait_until(lambda: log.exists() and "Train batch 2:" in log.read_text(), 120, "training to start")
    refused = {"on": True}
    answer(
        aws.client("ec2", "us-east-1", None),
        "DescribeInstances",
        lambda _: ec2_error("UnauthorizedOperation", "You are not authorized") if refused["on"] else None,
    )
    thread.join(timeout=60)
    refused["on"] = False
    captured = capfd.readouterr()
    assert not thread.is_alive() and result == {"exit": 1}, (result, captured.err[-2000:])
    (live,) = live_instances(ec2)
    iid = live["InstanceId"]
    assert f"{iid} (job) is still running" in captured.out, captured.out[-2000:]
    assert "`fab run --name job` again picks it up" in captured.out
    assert "`fab terminate --name job` ends it" in captured.out
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "failed"
    assert history["events"][-1] == {**history["events"][-1], "event": "left-running", "instance_id": iid}
    assert "Train batch" in log.read_text()  # its run was not stopped
