"""The detached engine: `fab run --detach` submits and returns; moto's Auto Scaling group launches
the instances, and the test plays each one's cloud-init (tests/e2e/detachkit.Instance: the user
data's work, then the boot from the bundle, with the instance's identity in the IMDS stand-in).
Nothing of the laptop takes part until `fab watch`. Checkpoints are in moto's S3. The run has
on_demand_after: 1, so the notice's boot switches the group to on-demand before its instance goes,
and the replacement is on-demand (docs/budget.md, "Detached runs")."""

from __future__ import annotations

import re

import boto3
from invoke import Context

from common.times import seconds_between
from ec2.journey import detach
from ec2.remote import detached
from tasks import detached as detached_tasks
from tasks import lifecycle, managed
from tests.e2e.detachkit import CKPT, REPO, Instance, group, live, load_cfg
from tests.e2e.engines import Finished
from tests.e2e.rehearsekit import Rehearsal, check_report
from tests.peers.hold import Held
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


class Detached:
    name = "dj"

    def __init__(self, cloud, spot_host, imds, tiny_dataset, tmp_path, capfd):
        self.ec2, self.config = cloud
        self.host, self.imds, self.tmp_path, self.capfd = spot_host, imds, tmp_path, capfd
        self.autoscaling = boto3.client("autoscaling")
        self.args = [
            *TINY_TRAIN,
            f"dataset.dataset_dir={tiny_dataset}",
            # The notice (a rehearsal through FIS, after `fab watch`) reaches a trainer held still
            # since "Train batch 3" (tests/peers/hold.py): the steps after it are the resume's.
            "num_training_batches=24",
            "output_dir=trained_models/dj",
            f"checkpoint_dir={CKPT}",
        ]

    def start(self) -> None:
        # Submit; the laptop's process returns once the group has its first instance.
        managed.run(
            Context(),
            name="dj",
            config=str(self.config),
            train_config="configs/demo.yaml",
            args=" ".join(self.args),
            imds_poll=0.2,
            no_gpu=True,
            setup_python=str(REPO / ".venv/bin/python"),
            detach=True,
            set_=["on_demand_after=1"],
        )
        assert "fab watch --name dj" in self.capfd.readouterr().out
        [self.first] = [i["InstanceId"] for i in group(self.autoscaling)["Instances"]]
        self.state = detached.load(boto3.client("s3"), detached.root_for(CKPT, "dj"))
        self.d = detach.Detached(load_cfg(self.config), "dj")

    def training(self) -> None:
        self.one = one = Instance(self.host, self.imds, self.state, self.first, self.tmp_path)
        wait_until(
            lambda: one.log.exists() and "Train batch 3:" in one.log.read_text(),
            300,
            "attempt 1 to train",
            every=0.02,
        )
        self.held = Held(one.log.parent)
        # `fab watch` meanwhile: state, attempt, current instance (found by tag) and its log over SSH.
        detach.watch(self.d, out=print, once=True)
        seen = self.capfd.readouterr().out
        assert f"[dj] running | attempt 1 of 4 | instance {self.first}" in seen
        assert "  | " in seen and "Train batch" in seen

    def live(self) -> list[str]:
        return live(self.ec2)

    def notice(self) -> int:
        # AWS's notice, sent by `fab rehearse` through FIS (the stand-in: the IMDS notice at once,
        # the instance taken back once this test has looked at the stopped attempt).
        self.rehearsal = Rehearsal(self.config, "dj", self.imds, self.ec2)
        self.held.go_once_signalled(self.one.log.parent)
        boot_out = self.one.wait(180)
        assert detached.load(self.d.s3, self.d.root()).status == "interrupted", boot_out
        assert group(self.autoscaling)["DesiredCapacity"] == 1  # left alone for AWS to replace
        # The notice's boot switched the group to on-demand before its instance went
        # (on_demand_after: 1): the replacement is on-demand, as its metadata will say.
        distribution = group(self.autoscaling)["MixedInstancesPolicy"]["InstancesDistribution"]
        assert distribution["OnDemandPercentageAboveBaseCapacity"] == 100
        self.imds.lifecycle = "on-demand"
        self.rehearsal.safe.set()
        return int(re.search(r"stopped by \S+ at step (\d+)", self.one.log.read_text()).group(1))

    def take_back(self) -> None:
        # FIS has AWS take the instance back; the group launches another, whose boot resumes from S3.
        assert self.rehearsal.taken_back() == [self.first]
        self.second = wait_until(
            lambda: [
                i["InstanceId"] for i in group(self.autoscaling)["Instances"] if i["InstanceId"] != self.first
            ],
            60,
            "a replacement",
        )[0]
        self.two = Instance(self.host, self.imds, self.state, self.second, self.tmp_path)
        self.boot_out = self.two.wait(300)

    def finish(self) -> Finished:
        # The watcher (a new laptop process) prints the summary.
        detached_tasks.watch(Context(), name="dj", poll=0.2, config=str(self.config))
        return Finished(
            name=self.name,
            out=self.capfd.readouterr().out,
            attempts=detached.load(self.d.s3, self.d.root()).attempts,
            resumed_log=self.two.log.read_text(),
            noticed=self.first,
        )

    def check_engine(self, done: Finished, stopped: int) -> None:
        # `fab rehearse`'s report, every phase from the run's S3 record: the boots noted the notice,
        # the seconds to safe, the step stopped at and the step resumed from.
        report = self.rehearsal.report()
        print(f"fab rehearse --name dj (a detached run):\n{report}")
        timed = check_report(report, "detached", self.first)
        a1, a2 = done.attempts
        assert (a1.last_step, a2.resumed_step) == (stopped, stopped)
        assert timed["notice → checkpoint in S3"] == round(a1.seconds_notice_to_safe, 1)
        assert timed["notice → resumed"] == a2.seconds_notice_to_resumed
        assert f"the run to resume on {self.second}" in report
        # The replacement's launch: its boot's start, after attempt 1's end (the two times the
        # boots wrote), to the report's tenth of a second.
        launched = seconds_between(a1.ended_at, a2.launched_at)
        assert abs(timed["exited → replacement launched"] - launched) <= 0.051
        assert "run dj: finished after 2 attempts on 2 instances" in done.out, done.out
        assert "preempted" in done.out and "1 interruption" in done.out
        # `fab watch` printed the boot's decision; the summary shows the replacement on-demand.
        assert "[dj] 1 interruption (on_demand_after: 1): the next attempt runs on-demand at $" in done.out
        assert [a.market for a in done.attempts] == ["spot", "on-demand"]
        assert [(a.instance_id, a.outcome) for a in done.attempts] == [
            (self.first, "preempted"),
            (self.second, "finished"),
        ]
        assert group(self.autoscaling)["DesiredCapacity"] == 0
        # The trainer's local outputs were kept in S3 when the last attempt ended.
        assert f"aws s3 sync {detached.outputs_uri(self.d.root())} outputs/dj" in done.out
        kept = boto3.client("s3").list_objects_v2(
            Bucket="spot-ckpt", Prefix="dj/checkpoint-spotrun-dj/outputs/"
        )
        assert kept.get("KeyCount", 0) > 0
        # The steps, read from the attempts' logs in S3 (the boots record none).
        assert (
            f"preempted at step {stopped}" in done.out and f"resumed at step {stopped}, finished" in done.out
        )
        # The ledger, from the record and those logs: in `fab watch`'s summary, and in `fab status`
        # under the run's line; attempt 2 resumed at the step attempt 1 stopped at.
        lifecycle.status(Context(), no_runs=True, config=str(self.config))
        status = self.capfd.readouterr().out
        for shown in (done.out, status):
            assert re.search(
                r"\n  ledger attempt 1: \$[\d.]+ on steps kept, .*, 0 recomputed steps", shown
            ), shown
            assert "\n  ledger attempt 2: $" in shown and "\n  ledger total: $" in shown, shown
        assert re.search(r"detached run dj: .*, finished, cost so far \$[\d.]+\n  ledger attempt 1: ", status)
        # `fab terminate` removes the group and its template: nothing of the run is left in AWS.
        lifecycle.terminate(Context(), name="dj", yes=True, config=str(self.config))
        assert self.autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
        assert self.ec2.describe_launch_templates()["LaunchTemplates"] == []
