"""The cluster engine: `fab run --nodes 2` in this process (a thread). Two sshd servers stand in
for node 0 and node 1 (tests/peers/node_route.py takes SSH to the server of the instance's
`spotrun:node` tag, so a replacement for node 1 is node 1's server again), each with its own IMDS
stand-in and HOME; the real trainer under torchrun (gloo, CPU, one process per node); checkpoints
in moto's S3; placement groups answered at the botocore level (tests/peers/placement_groups.py).
The notice goes to node 1 only, and node 1's instance is the one AWS takes back."""

from __future__ import annotations

import io
import json
import re
import time

import boto3
import pytest
import torch

from common.attempt import Attempt
from common.times import seconds_between
from ec2.journey import ledger
from ec2.journey.history import load as load_history
from tests.e2e.clusterkit import cluster_members as members
from tests.e2e.clusterkit import members_groups, tag, take_back
from tests.e2e.engines import Finished
from tests.e2e.rehearsekit import Rehearsal, check_report
from tests.e2e.runkit import start_fab_run
from tests.peers.fab_process import free_port
from tests.peers.hold import Held
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN

# The ranks are held still from "Train batch 3" until the rehearsal's notice reaches node 1
# (tests/peers/hold.py): the steps after it are the resume's.
STEPS = 24


class Cluster:
    name = "job"

    def __init__(self, cluster_cloud, tiny_dataset, tmp_path, capfd):
        self.ec2, self.config, self.nodes, self.groups = cluster_cloud
        self.capfd = capfd
        self.routes = self.config.parent / "routes.json"
        self.dest = tmp_path / "out"
        self.args = [
            *TINY_TRAIN,
            f"dataset.dataset_dir={tiny_dataset}",
            f"num_training_batches={STEPS}",
            "output_dir=trained_models/cl",
            "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
        ]
        self.rdirs = [home / "spotrun" / "runs" / "train" for _, _, home in self.nodes]

    def logs(self) -> str:
        return "".join((r / "log").read_text() for r in self.rdirs if (r / "log").exists())

    def _alive(self) -> None:
        if self.result or not self.thread.is_alive():
            captured = self.capfd.readouterr()
            pytest.fail(f"fab run ended early: {self.result}\n{captured.out[-4000:]}\n{captured.err[-2000:]}")

    def start(self) -> None:
        self.began = time.monotonic()
        self.thread, self.result = start_fab_run(
            self.config, self.dest, self.args, nodes=2, rdzv_port=free_port()
        )

    def training(self) -> None:
        training = lambda: self._alive() or "Train batch 3:" in self.logs()  # noqa: E731
        wait_until(training, 300, "training on both nodes", every=0.02)
        self.held = Held(*self.rdirs)
        self.first = {tag(i, "spotrun:node"): i for i in members(self.ec2)}
        assert len(self.first) == 2 and "data-parallel over 2 processes" in self.logs()
        (self.members_group,) = members_groups(self.ec2)

    def live(self) -> list[str]:
        return [i["InstanceId"] for i in members(self.ec2) if i["State"]["Name"] in ("pending", "running")]

    def notice(self) -> int:
        # The notice on node 1 only, sent by `fab rehearse --node 1` through FIS (the stand-in:
        # node 1's IMDS notice at once; node 1 taken back once this test has looked at the stopped
        # attempt). Its watcher stops every rank at one step, rank 0 saves to S3, both nodes exit 75.
        self.rehearsal = Rehearsal(
            self.config, "job", self.nodes[1][1], self.ec2, node=1, dest=self.dest, take_back=self._take_back
        )
        self.held.go_once_signalled(self.rdirs[1])
        wait_until(lambda: (self.rdirs[1] / "preempted").exists(), 120, "node 1's preempted record")
        for rdir in self.rdirs:
            wait_until(lambda rdir=rdir: (rdir / "exit_code").exists(), 120, "both nodes' runs to end")
        codes = [(r / "exit_code").read_text().strip() for r in self.rdirs]
        assert codes == ["75", "75"], (codes, self.logs()[-4000:])
        stopped = int(re.search(r"stopped by \S+ at step (\d+)", self.logs()).group(1))
        # AWS takes node 1 two minutes after the notice; here once the laptop has seen the attempt
        # stop (its "interrupted" event), having read node 1's preempted record on the way.
        events = lambda: json.loads((self.dest / "run.json").read_text())["events"]  # noqa: E731
        wait_until(
            lambda: any(e["event"] == "interrupted" for e in events()), 60, "the laptop to see the stop"
        )
        self.rehearsal.safe.set()
        return stopped

    def _take_back(self, instance_ids: list[str]) -> None:
        # AWS takes node 1 back, and its disk with it (a replacement starts empty).
        assert instance_ids == [self.first["1"]["InstanceId"]]
        take_back(self.ec2, self.routes, instance_ids[0], self.nodes[1][2])

    def take_back(self) -> None:
        self.rehearsal.taken_back()

    def finish(self) -> Finished:
        self.thread.join(timeout=300)
        self.wall = time.monotonic() - self.began
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
            noticed=self.first["1"]["InstanceId"],
        )

    def check_engine(self, done: Finished, stopped: int) -> None:
        history, ec2, out = self.history, self.ec2, done.out
        a1, a2 = history["attempts"]
        # `fab rehearse --node 1`'s report, every phase from run.json, node 1 named.
        report = self.rehearsal.report()
        print(f"fab rehearse --name job --node 1 (a cluster run):\n{report}")
        timed = check_report(report, "cluster", self.first["1"]["InstanceId"], node=1)
        assert timed["notice → checkpoint in S3"] == round(a1["seconds_notice_to_safe"], 1)
        assert timed["notice → resumed"] == a2["seconds_notice_to_resumed"]
        # The replacement is node 1's new member, launched after the laptop saw the attempt end.
        new = history["members"][2]
        assert f"the run to resume on {new['instance_id']}" in report
        exited = next(e["at"] for e in history["events"] if e["event"] == "interrupted")
        launched = seconds_between(exited, new["launched_at"])
        assert abs(timed["exited → replacement launched"] - launched) <= 0.051
        assert (a1["nodes_lost"], a2["resumed_step"], history["steps_lost"]) == ([1], stopped, [0])
        assert f"resumed from s3://spot-ckpt/job/checkpoint/last.pt at step {stopped}" in done.resumed_log
        assert 0 < a2["seconds_notice_to_resumed"] < 180
        body = boto3.client("s3").get_object(Bucket="spot-ckpt", Key="job/checkpoint/last.pt")["Body"].read()
        assert torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)["step"] == STEPS

        # The replacement: one new instance for node 1, same zone, in the placement group and the
        # members' group, read back from moto (the group from the request: moto keeps none).
        first_ids = {f["InstanceId"] for f in self.first.values()}
        (new,) = [i for i in members(ec2) if i["InstanceId"] not in first_ids]
        assert tag(new, "spotrun:node") == "1" and tag(new, "Name") == "job-1"
        assert new["Placement"]["AvailabilityZone"] == self.first["0"]["Placement"]["AvailabilityZone"]
        sent = self.groups.run_requests[-1]
        assert (sent["MinCount"], sent["Placement.GroupName"]) == (1, "spotrun-job")
        assert self.members_group["GroupId"] in sent.values()  # the members-only rule reaches it
        assert [m["node"] for m in history["members"]] == [0, 1, 1]
        assert history["members"][2]["instance_id"] == new["InstanceId"]
        assert history["members"][0]["instance_id"] == self.first["0"]["InstanceId"]  # the survivor stayed
        # Finished: every member terminated, the placement group and the members' group removed.
        assert {i["State"]["Name"] for i in members(ec2)} == {"terminated"}
        assert self.groups.groups == {} and members_groups(ec2) == []
        # The trainer's outputs from the node rank 0 ran on (either: c10d numbers nodes in
        # rendezvous order), logs from both nodes of both attempts.
        assert f"at step {stopped}" in (self.dest / "training_log").read_text()
        assert (self.dest / "metrics.csv").exists()
        for attempt in (1, 2):
            assert (self.dest / "nodes" / f"attempt-{attempt}" / "node-0" / "log").exists()
        assert (self.dest / "nodes" / "attempt-2" / "node-1" / "log").exists()
        assert "run job: finished after 2 attempts on 2 nodes x CPU per node (3 instances)" in out
        assert "nodes lost 1, steps lost to interruptions 0, notice to resumed" in out
        assert history["total_cost_usd"] is not None
        # The ledger: the members' cost cut into the two attempts, printed after the summary's total
        # and adding up to it; attempt 2's recovery is both nodes' billed time from attempt 1's end
        # to the resume (the survivor waited while node 1's replacement launched and set up).
        printed = re.search(r"\n  total \$([\d.]+) for .*\n((?:  ledger .*\n?)+)", out)
        assert printed, out[-3000:]
        ledger_lines = printed.group(2).splitlines()
        assert [line.split(":")[0] for line in ledger_lines] == [
            "  ledger attempt 1",
            "  ledger attempt 2",
            "  ledger total",
        ], ledger_lines
        # The notice cost no step: none recomputed.
        assert "0 recomputed steps" in ledger_lines[0], ledger_lines
        total = re.match(r"  ledger total: \$([\d.]+) on steps kept, \$([\d.]+) lost", ledger_lines[2])
        kept, lost = total.groups()
        assert abs(float(kept) + float(lost) - float(printed.group(1))) <= 0.0002, printed.group(0)
        # At full precision (moto prices spot at $0.00001/h: the printed cents are all 0).
        rows = ledger.cluster_rows(load_history(self.dest / "run.json"))
        assert [r.attempt for r in rows] == [1, 2]
        assert sum(r.kept_usd + r.lost_usd for r in rows) == pytest.approx(history["total_cost_usd"])
        assert rows[0].recovery_usd == 0 < rows[1].recovery_usd and rows[1].recomputed_steps == 0
        print(
            "fab run --nodes 2 (two sshd stand-ins, gloo on the CPU): nodes lost 1, "
            f"stopped at step {stopped}, steps lost 0, notice to resumed "
            f"{a2['seconds_notice_to_resumed']} s, fab run {self.wall:.0f} s in all"
        )
