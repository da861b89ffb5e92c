"""`fab run --detach` end to end against real peers: moto's server (EC2, S3, Auto Scaling), the sshd
fixture standing in for every instance the group launches (ssh_proxy_command: nc to its port),
the loopback IMDS, the real trainer in tmux under the notice watcher.

The test plays AWS and each instance's cloud-init (tests/e2e/detachkit.Instance): when the group
has an instance, it does what the user data does and starts the boot from the bundle. The laptop's
`fab run --detach` has returned by then; nothing of the laptop takes part until `fab watch`.
"""

from __future__ import annotations

import re

import boto3
from invoke import Context

from ec2.journey import detach
from ec2.remote import detached
from tasks import detached as detached_tasks
from tasks import lifecycle, managed
from tests.e2e.detachkit import CKPT, REPO, Instance, group, live, load_cfg
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_detached_run_survives_an_interruption_with_no_laptop(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capsys
):
    ec2, config = cloud
    autoscaling = boto3.client("autoscaling")
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=60",
        "output_dir=trained_models/dj",
        f"checkpoint_dir={CKPT}",
    ]
    # Submit; the laptop's process returns once the group has its first instance.
    managed.run(
        Context(),
        name="dj",
        config=str(config),
        train_config="configs/demo.yaml",
        args=" ".join(args),
        imds_poll=0.2,
        no_gpu=True,
        setup_python=str(REPO / ".venv/bin/python"),
        detach=True,
    )
    out = capsys.readouterr().out
    assert "fab watch --name dj" in out
    [first] = [i["InstanceId"] for i in group(autoscaling)["Instances"]]
    state = detached.load(boto3.client("s3"), detached.root_for(CKPT, "dj"))

    # Attempt 1 boots, trains, and gets a spot notice.
    one = Instance(spot_host, imds, state, first, tmp_path)
    wait_until(
        lambda: one.log.exists() and "Train batch 3:" in one.log.read_text(), 120, "attempt 1 to train"
    )
    # `fab watch` meanwhile: state, attempt, current instance (found by tag) and its log over SSH.
    d = detach.Detached(load_cfg(config), "dj")
    detach.watch(d, out=print, once=True)
    seen = capsys.readouterr().out
    assert f"[dj] running | attempt 1 of 4 | instance {first}" in seen
    assert "  | " in seen and "Train batch" in seen
    imds.mark_interruption()
    boot_out = one.wait(90)
    stopped = int(re.search(r"stopped by \S+ at step (\d+)", one.log.read_text()).group(1))
    assert detached.load(d.s3, d.root()).status == "interrupted", boot_out
    assert group(autoscaling)["DesiredCapacity"] == 1  # left alone for AWS to replace

    # AWS takes the instance back; the group launches another, whose boot resumes from S3.
    imds.clear()
    ec2.terminate_instances(InstanceIds=[first])
    second = wait_until(
        lambda: [i["InstanceId"] for i in group(autoscaling)["Instances"] if i["InstanceId"] != first],
        30,
        "a replacement",
    )[0]
    two = Instance(spot_host, imds, state, second, tmp_path)
    boot_out = two.wait(180)
    log = two.log.read_text()
    assert f"at step {stopped}" in log and "resumed from" in log, boot_out

    # The watcher (a new laptop process) prints the summary; the group is left with nothing.
    detached_tasks.watch(Context(), name="dj", poll=0.2, config=str(config))
    seen = capsys.readouterr().out
    assert "run dj: finished after 2 attempts on 2 instances" in seen, seen
    assert "preempted" in seen and "1 interruption" in seen
    final = detached.load(d.s3, d.root())
    assert [(a.instance_id, a.outcome) for a in final.attempts] == [
        (first, "preempted"),
        (second, "finished"),
    ]
    assert group(autoscaling)["DesiredCapacity"] == 0
    assert live(ec2) == []
    # The trainer's local outputs were kept in S3 when the last attempt ended.
    assert f"aws s3 sync {detached.outputs_uri(d.root())} outputs/dj" in seen
    kept = boto3.client("s3").list_objects_v2(Bucket="spot-ckpt", Prefix="dj/checkpoint-spotrun-dj/outputs/")
    assert kept.get("KeyCount", 0) > 0
    # `fab terminate` removes the group and its template: nothing of the run is left in AWS.
    lifecycle.terminate(Context(), name="dj", yes=True, config=str(config))
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
