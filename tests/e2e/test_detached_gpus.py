"""A detached run uses the instance's GPUs as an attended one does: the boot starts the trainer
through the one start path (ec2.remote.startrun) under torchrun, one rank per GPU or `--gpus` of
them. The instance's `nvidia-smi -L` lists four GPUs (a stand-in printing nvidia-smi's documented
`-L` lines; the ranks run on the CPU with gloo), `--gpus 2` asks for two. A spot notice stops both
ranks at one step (the watcher signals the ranks, rank 0 saves to S3, both exit 75), and the
group's next instance resumes from that step, again on two ranks."""

from __future__ import annotations

import re

import boto3
from invoke import Context

from ec2.remote import detached
from tasks import managed
from tests.e2e.detachkit import CKPT, REPO, Instance, group
from tests.peers.hold import Held
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_detached_run_trains_on_the_gpus_asked_and_a_notice_stops_every_rank(
    cloud, spot_host, imds, tiny_dataset, tmp_path
):
    ec2, config = cloud
    spot_host.stand_in_gpus(4)
    autoscaling = boto3.client("autoscaling")
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=16",
        "output_dir=trained_models/dj",
        f"checkpoint_dir={CKPT}",
    ]
    managed.run(
        Context(),
        name="dj",
        config=str(config),
        train_config="configs/demo.yaml",
        args=" ".join(args),
        imds_poll=0.2,
        no_gpu=True,
        gpus=2,
        setup_python=str(REPO / ".venv/bin/python"),
        detach=True,
    )
    [first] = [i["InstanceId"] for i in group(autoscaling)["Instances"]]
    state = detached.load(boto3.client("s3"), detached.root_for(CKPT, "dj"))
    assert state.train_config == "configs/demo.yaml" and state.gpus == 2

    one = Instance(spot_host, imds, state, first, tmp_path)
    rdir = one.log.parent
    wait_until(
        lambda: one.log.exists() and "Train batch 3:" in one.log.read_text(),
        180,
        "attempt 1 to train",
        every=0.02,
    )
    assert "--nproc_per_node 2" in (rdir / "command").read_text()
    assert (rdir / "gpus").read_text().strip() == "2"
    # Both ranks announced themselves to the watcher (their stop handlers are in place).
    wait_until(lambda: len(list((rdir / "ranks").glob("rank-*.pid"))) == 2, 60, "both ranks")

    # Held still until the notice's signal reaches both (tests/peers/hold.py): a fast machine
    # trains the whole run in about a second.
    with Held(rdir) as held:
        imds.mark_interruption()
        held.go_once_signalled(rdir)
    first_boot = boot_out = one.wait(120)
    text = one.log.read_text()
    # Each rank stopped and said so with the run's resumable exit; rank 0 printed the one step.
    assert {p.read_text().strip() for p in (rdir / "ranks").glob("rank-*.exit")} == {"75"}, boot_out
    assert len(list((rdir / "ranks").glob("rank-*.exit"))) == 2
    [stopped] = re.findall(r"stopped by \S+ at step (\d+)", text)
    s3 = boto3.client("s3")
    record = detached.load(s3, state.root)
    assert record.status == "interrupted" and record.attempts[0].outcome == "preempted", boot_out
    assert record.attempts[0].exit_code == 75
    assert group(autoscaling)["DesiredCapacity"] == 1  # left for AWS to replace

    imds.clear()
    ec2.terminate_instances(InstanceIds=[first])
    second = wait_until(
        lambda: [i["InstanceId"] for i in group(autoscaling)["Instances"] if i["InstanceId"] != first],
        30,
        "a replacement",
    )[0]
    two = Instance(spot_host, imds, state, second, tmp_path)
    boot_out = two.wait(300)
    log = two.log.read_text()
    assert "resumed from" in log and f"at step {stopped}" in log, boot_out
    assert "--nproc_per_node 2" in (rdir / "command").read_text()
    final = detached.load(s3, state.root)
    assert [(a.instance_id, a.outcome) for a in final.attempts] == [
        (first, "preempted"),
        (second, "finished"),
    ]
    print(first_boot, boot_out)  # shown with -s: the boot's own account (docs/detached-gpus.md quotes it)
