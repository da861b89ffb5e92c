"""Two machines, one run: two sshd servers on their own ports stand in for two nodes (adopted as
box-0 and box-1), each with its own IMDS stand-in and moto as its instance role. `fab setup
--nodes 2` sets both up at once; `fab train --nodes 2` starts torchrun on each, meeting through the
c10d rendezvous at node 0 (127.0.0.1 here), gloo on the CPU, one process per node, checkpoints in
moto's S3. Then the spot notice on node 1 only: its watcher stops its rank, the per-step
collective stops rank 0 at the same step, rank 0 writes the checkpoint (both ranks' random
streams) to S3, both nodes exit 75, node 1 `preempted` and node 0 `finished(75)`.

The restart that resumes from S3 at that step (`fab train --nodes 2 --force` here; `fab run
--nodes 2` on the replacement) is not repeated here: both go through ec2.journey.stages.start_nodes
(force on), and the cluster engine of tests/e2e/test_spot_journey.py runs it on two nodes and
asserts the resume from s3://.../last.pt at the stopped step, every step after it trained (the
final checkpoint at the last step) and no step lost.

c10d numbers the nodes in rendezvous order, so global rank 0 (the one that logs and saves) may run
on either machine: the test reads both nodes' logs."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import boto3
import pytest
import torch
from invoke import Context

from ec2.remote import runs
from ec2.remote.ssh import Machine
from tasks import remote as t
from tests.peers.imds import ImdsServer, instance_env, wait_until
from tests.peers.sshd import SSHD, SshdServer, require_binaries
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_nodes(aws_env, monkeypatch, ready_venv):
    """Two adopted lab machines, set up before (tests/peers/ready_venv.py)."""
    require_binaries(SSHD, "ssh", "rsync", "tmux", "nc")
    roots = [Path(tempfile.mkdtemp(prefix=f"n{k}", dir="/tmp")) for k in range(2)]
    for root in roots:
        ready_venv(root / "remote")
    (roots[0] / "home").mkdir()
    monkeypatch.setenv("HOME", str(roots[0] / "home"))
    monkeypatch.setenv("SPOTRUN_HOME", str(roots[0] / "s"))
    try:
        with ImdsServer() as imds0, ImdsServer() as imds1:
            with (
                SshdServer(roots[0], env=instance_env(imds0.url, aws_env)) as node0,
                SshdServer(roots[1], env=instance_env(imds1.url, aws_env)) as node1,
            ):
                yield [(node0, imds0), (node1, imds1)]
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def _wait(rdirs, check, timeout: float, what: str) -> None:
    try:
        wait_until(check, timeout, what)
    except AssertionError:
        for rdir in rdirs:  # what each node said, for the failure report
            print(rdir, (rdir / "log").read_text()[-3000:] if (rdir / "log").exists() else "(no log)")
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_and_stop_together_at_one_step_on_one_nodes_notice(
    two_nodes, tiny_dataset, monkeypatch, capfd
):
    monkeypatch.chdir(REPO)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="spot-ckpt")
    machines = [Machine(server.record(name=f"box-{k}")) for k, (server, _) in enumerate(two_nodes)]
    rdirs = [Path(runs.run_dir(m.record.remote_dir, "train")) for m in machines]
    c = Context()
    t.setup(c, name="box", nodes=2, python=str(REPO / ".venv/bin/python"), no_gpu=True)
    assert capfd.readouterr().out.count(": set up") == 2
    args = " ".join(
        [
            *TINY_TRAIN,
            f"dataset.dataset_dir={tiny_dataset}",
            "num_training_batches=5000",
            "output_dir=trained_models/multi",
            "checkpoint_dir=s3://spot-ckpt/box/checkpoint",
        ]
    )
    port = _free_port()
    t.train(c, name="box", nodes=2, rdzv_port=port, train_config="configs/demo.yaml", args=args)
    assert "on 2 nodes x 1 process(es)" in capfd.readouterr().out
    for k, rdir in enumerate(rdirs):
        command = (rdir / "command").read_text()
        assert (
            f"--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:{port}" in command
        )
        assert f"is_host={1 if k == 0 else 0}" in command

    def logs() -> str:
        return "".join((r / "log").read_text() for r in rdirs if (r / "log").exists())

    _wait(rdirs, lambda: "Train batch 3:" in logs(), 180, "training on both nodes")
    assert "data-parallel over 2 processes" in logs()

    two_nodes[1][1].mark_interruption()  # node 1 only
    noticed = time.time()
    wait_until(lambda: (rdirs[1] / "preempted").exists(), 60, "node 1's preempted record")
    for rdir in rdirs:
        wait_until(lambda rdir=rdir: (rdir / "exit_code").exists(), 60, "both nodes to end")
    text = logs()
    assert [(r / "exit_code").read_text().strip() for r in rdirs] == ["75", "75"], text[-3000:]
    assert str(runs.run_state(machines[0])) == "finished(75)"  # no notice on node 0
    assert str(runs.run_state(machines[1])) == "preempted"
    record = json.loads((rdirs[1] / "preempted").read_text())
    assert record["command_exit_code"] == 75 and record["checkpoint"]["state"] == "in_s3"
    (stopped,) = map(int, re.findall(r"stopped by \S+ at step (\d+)", text))
    body = s3.get_object(Bucket="spot-ckpt", Key="box/checkpoint/last.pt")["Body"].read()
    ckpt = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    assert ckpt["step"] == stopped and len(ckpt["rng"]) == 2  # both ranks' streams, saved together

    print(f"multi-node: stopped at step {stopped}; notice to both nodes exited {time.time() - noticed:.1f} s")
