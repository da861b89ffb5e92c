"""The laptop side of a detached run against real peers (moto, sshd, IMDS, the real trainer):
`fab status` lists it, Ctrl-C in `fab watch` stops only the watching, `fab stop` ends it
gracefully (the trainer checkpoints to S3, then desired 0), and `fab cleanup` removes the
group and template it left. The same run carries a `deadline` it cannot meet: its boot projects
the finish from the measured step time, switches the group to on-demand for the next attempt, and
`fab watch` says so (docs/budget.md, "Detached runs")."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import boto3
from invoke import Context

from ec2.journey import detach
from ec2.journey.stages import Plan
from ec2.remote import detached
from ec2.remote.trainrun import TRAINER_SIGNAL, train_command
from tasks import detached as detached_tasks
from tasks import lifecycle, managed
from tests.e2e.detachkit import CKPT, REPO, Instance, group, live, load_cfg
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_status_watch_ctrl_c_stop_and_cleanup(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capsys, monkeypatch
):
    ec2, config = cloud
    # A deadline a minute away: 100,000 steps cannot make it, so the first projection misses.
    deadline = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat(timespec="seconds")
    cfg = dataclasses.replace(load_cfg(config), deadline=deadline)
    autoscaling, s3 = boto3.client("autoscaling"), boto3.client("s3")
    overrides = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=100000",  # runs until stopped
        "output_dir=trained_models/dj",
        f"checkpoint_dir={CKPT}",
    ]
    plan = Plan(
        command=train_command(cfg.remote_dir, "configs/demo.yaml", overrides),
        checkpoint_dir=CKPT,
        output_dir="trained_models/dj",
        # The boot builds the same command from the config (its steps are the deadline's projection's).
        train_config="configs/demo.yaml",
        overrides=overrides,
        signal=TRAINER_SIGNAL,
        imds_poll_s=0.2,
        setup_python=str(REPO / ".venv/bin/python"),
        require_gpu=False,
    )
    done = detach.submit(cfg, "dj", plan, poll_s=0.2)
    one = Instance(spot_host, imds, done.state, done.instance_id, tmp_path)
    try:
        wait_until(lambda: one.log.exists() and "Train batch 2:" in one.log.read_text(), 120, "training")
        root = detached.root_for(CKPT, "dj")
        wait_until(lambda: detached.load(s3, root).events, 120, "the deadline's projection")
        [miss] = detached.load(s3, root).events
        assert miss["event"] == "deadline-miss" and "misses the deadline" in miss["line"], miss
        # The next attempt (AWS's replacement) is on-demand; this one trains on.
        policy = group(autoscaling)["MixedInstancesPolicy"]
        assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100

        lifecycle.status(Context(), no_runs=True, config=str(config))
        seen = capsys.readouterr().out
        assert (
            f"detached run dj: group spotrun-dj, instance {done.instance_id}, attempt 1 of 4, running" in seen
        )
        assert "cost so far $" in seen
        # Its ledger so far: attempt 1, still running, counted until now.
        assert "\n  ledger attempt 1: $" in seen and "\n  ledger total: $" in seen, seen

        def ctrl_c(_seconds):
            raise KeyboardInterrupt

        # Only the sleep is put back afterwards: monkeypatch.undo() would also restore the real HOME
        # the sshd fixture replaced, and the rest of the test would write the user's ~/.spotrun.
        with monkeypatch.context() as patch:
            patch.setattr(detach.time, "sleep", ctrl_c)
            detached_tasks.watch(Context(), name="dj", config=str(config))
        watched = capsys.readouterr().out
        assert "stopped watching; the run goes on" in watched
        assert f"[dj] {miss['line']}" in watched and ": the next attempt runs on-demand at $" in watched
        assert group(autoscaling)["DesiredCapacity"] == 1 and one.boot.poll() is None

        detached_tasks.stop(Context(), name="dj", timeout=90, config=str(config))
        boot_out = one.wait(60)
    finally:
        one.boot.kill()
    state = detached.load(s3, detached.root_for(CKPT, "dj"))
    assert state.status == "stopped", boot_out
    assert [(a.outcome, a.exit_code) for a in state.attempts] == [("stopped", 75)]
    assert "checkpoint" in one.log.read_text().lower()
    # The checkpoint reached S3 before the group was stopped.
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket="spot-ckpt", Prefix="dj/checkpoint/").get("Contents", [])
    ]
    assert any(k.endswith(".pt") for k in keys), keys
    assert group(autoscaling)["DesiredCapacity"] == 0 and live(ec2) == []

    lifecycle.cleanup(Context(), config=str(config))
    out = capsys.readouterr().out
    assert "deleted Auto Scaling group spotrun-dj" in out and "deleted launch template spotrun-dj" in out
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


def test_a_detached_run_stops_itself_at_max_cost_usd_with_a_checkpoint(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capfd
):
    """`fab run --detach --set max_cost_usd=...` end to end: the cap travels in the run's record, the
    instance's boot prices the attempt (on-demand here, at the $/h recorded at submit) at its first
    look, asks the real trainer to checkpoint and stop, stops the group, and `fab watch` says why."""
    ec2, config = cloud
    imds.lifecycle = "on-demand"  # market: on-demand, as the group launches it
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=100000",  # runs until the cap stops it
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
        setup_python=str(REPO / ".venv/bin/python"),
        detach=True,
        # g5.xlarge's $1.006/h (the Pricing API's stand-in answers nothing: the table's figure):
        # the setup alone passes $0.001.
        set_=["market=on-demand", "instance_types=[g5.xlarge]", "max_cost_usd=0.001"],
    )
    s3 = boto3.client("s3")
    state = detached.load(s3, detached.root_for(CKPT, "dj"))
    assert state.max_cost_usd == 0.001 and state.on_demand_usd == {"g5.xlarge": 1.006}
    [first] = [i["InstanceId"] for i in group(boto3.client("autoscaling"))["Instances"]]
    one = Instance(spot_host, imds, state, first, tmp_path)
    boot_out = one.wait(180)
    final = detached.load(s3, state.root)
    assert final.status == "stopped", boot_out
    assert [(a.outcome, a.exit_code) for a in final.attempts] == [("stopped", 75)]
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket="spot-ckpt", Prefix="dj/checkpoint/").get("Contents", [])
    ]
    assert any(k.endswith(".pt") for k in keys), keys
    assert group(boto3.client("autoscaling"))["DesiredCapacity"] == 0
    capfd.readouterr()
    detached_tasks.watch(Context(), name="dj", poll=0.2, config=str(config))
    watched = capfd.readouterr().out
    assert "reached max_cost_usd $0.001: asking the trainer to checkpoint and stop" in watched, watched
    assert "[dj] stopped at the cap (max_cost_usd $0.001) with a checkpoint" in watched
    assert live(ec2) == []
