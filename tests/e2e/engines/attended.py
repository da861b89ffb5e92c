"""The attended engine: `fab run` in this process (a thread), one instance at a time, the sshd
fixture standing in for every instance moto launches. Checkpoints go to moto's S3, and the notice
is sent by `fab rehearse` through AWS FIS, as for the other two engines: FIS is not in moto, so its
documented responses are injected on the real client at the botocore level (tests/peers/fis.py),
and the experiment's effect is played by the IMDS stand-in (the notice) and moto (the termination,
once the laptop has seen the run stop). The attended run's local checkpoints (pulled by the laptop
at the notice, restored onto the replacement's empty disk) are tests/e2e/test_budget.py's and
tests/e2e/test_managed_run.py's."""

from __future__ import annotations

import json
import re

import boto3

from common.attempt import Attempt
from ec2.cloud import fis
from tests.e2e.engines import Finished
from tests.e2e.rehearsekit import Rehearsal, check_report
from tests.e2e.runkit import join_while_progressing, live_instances, start_fab_run
from tests.peers.hold import Held
from tests.peers.iam_lint import findings
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


class Attended:
    name = "job"

    def __init__(self, cloud, spot_host, imds, tiny_dataset, tmp_path, capfd):
        self.ec2, self.config = cloud
        self.host, self.imds, self.capfd = spot_host, imds, capfd
        self.dest = tmp_path / "out"
        self.args = [
            *TINY_TRAIN,
            f"dataset.dataset_dir={tiny_dataset}",
            # The rehearsal (FIS role, the IAM-lag retry, template, experiment) reaches the run 3-4 s
            # after "Train batch 3", the trainer held still meanwhile (tests/peers/hold.py): the
            # steps after it are the resume's.
            "num_training_batches=24",
            "output_dir=trained_models/mr",
            "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
        ]
        self.run_dir = spot_host.root / "remote" / "runs" / "train"
        self.log = self.run_dir / "log"

    def start(self) -> None:
        self.thread, self.result = start_fab_run(self.config, self.dest, self.args)

    def training(self) -> None:
        wait_until(
            lambda: self.log.exists() and "Train batch 3:" in self.log.read_text(),
            300,
            "attempt 1 to train",
            every=0.02,
        )
        self.held = Held(self.run_dir)
        (self.first,) = self.live()

    def live(self) -> list[str]:
        return [i["InstanceId"] for i in live_instances(self.ec2)]

    def _events(self) -> list[dict]:
        return json.loads((self.dest / "run.json").read_text())["events"]

    def notice(self) -> int:
        # `fab rehearse --name job`; FIS cannot assume the role made a moment before at first.
        self.rehearsal = Rehearsal(
            self.config, self.name, self.imds, self.ec2, dest=self.dest, refuse_starts=1
        )
        self.held.go_once_signalled(self.run_dir)
        wait_until((self.run_dir / "preempted").exists, 120, "the watcher's preempted record")
        record = json.loads((self.run_dir / "preempted").read_text())
        assert record["command_exit_code"] == 75 and record["checkpoint"]["state"] == "in_s3", record
        # AWS takes the instance two minutes after the notice; here once the laptop has seen the run
        # stop on it (the "interrupted" event), which is all those minutes are for.
        wait_until(
            lambda: any(e["event"] == "interrupted" for e in self._events()), 60, "the laptop to see the stop"
        )
        self.rehearsal.safe.set()
        return int(re.search(r"stopped by \S+ at step (\d+)", self.log.read_text()).group(1))

    def take_back(self) -> None:
        # FIS has AWS take the noticed instance back (moto's termination); `fab run` relaunches.
        assert self.rehearsal.taken_back() == [self.first]

    def finish(self) -> Finished:
        join_while_progressing(self.thread, self.log, self.dest / "run.json")
        out = self.capfd.readouterr().out
        assert not self.thread.is_alive(), out[-3000:]
        assert self.result == {}, (self.result, out[-3000:])
        self.history = json.loads((self.dest / "run.json").read_text())
        assert self.history["status"] == "finished", out[-3000:]
        return Finished(
            name=self.name,
            out=out,
            attempts=[Attempt.from_dict(a) for a in self.history["attempts"]],
            resumed_log=(self.dest / "run" / "log").read_text(),
            noticed=self.first,
        )

    def check_engine(self, done: Finished, stopped: int) -> None:
        history, (a1, a2) = self.history, self.history["attempts"]
        assert a2["resumed_step"] == stopped
        # Its recovery's billed time ends when the laptop saw it resume (ec2.journey.ledger).
        resumed = next(e["at"] for e in history["events"] if e["event"] == "resumed")
        assert a2["launched_at"] < a2["running_at"] == resumed < a2["ended_at"]
        # The replacement avoided the interrupted type and zone.
        assert (a1["instance_type"], a1["zone"]) != (a2["instance_type"], a2["zone"])
        assert history["steps_lost"] == [0]
        assert "run job: finished after 2 attempts on 2 instances" in done.out
        assert "1 interruption, steps lost to interruptions 0" in done.out
        assert a1["cost_usd"] is not None and history["total_cost_usd"] >= a1["cost_usd"]

        # `fab rehearse`'s report, from the run's own record: every phase timed, nothing lost, a cost.
        report = self.rehearsal.report()
        print(f"fab rehearse --name job (an attended run):\n{report}")
        check_report(report, "attended", self.first)
        assert "FIS does not see role spotrun-fis-us-east-1 yet (IAM propagates)" in report
        self._check_fis()

    def _check_fis(self) -> None:
        """The experiment FIS was asked for, and the role it runs as."""
        stand_in = self.rehearsal.stand_in
        operations = [op for op, _ in stand_in.requests]
        assert operations[:3] == ["CreateExperimentTemplate", "StartExperiment", "StartExperiment"]
        assert operations[-1] == "DeleteExperimentTemplate"
        template = stand_in.requests[0][1]
        (target,) = template["targets"].values()
        assert target["resourceType"] == "aws:ec2:spot-instance"
        assert target["resourceArns"] == [f"arn:aws:ec2:us-east-1:123456789012:instance/{self.first}"]
        (action,) = template["actions"].values()
        assert action["actionId"] == "aws:ec2:send-spot-instance-interruptions"
        assert action["parameters"] == {"durationBeforeInterruption": "PT2M"}
        assert template["stopConditions"] == [{"source": "none"}]
        assert stand_in.terminated == [self.first]
        # The role: trusts FIS only, may interrupt spotrun's instances only, passes the linter.
        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.get_role(RoleName="spotrun-fis-us-east-1")["Role"]
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "fis.amazonaws.com"}]
        assert template["roleArn"] == role["Arn"] and role["Path"] == "/spotrun/"
        policy = iam.get_role_policy(RoleName="spotrun-fis-us-east-1", PolicyName=fis.POLICY_NAME)[
            "PolicyDocument"
        ]
        policy = json.loads(policy) if isinstance(policy, str) else policy
        assert findings(policy) == []
