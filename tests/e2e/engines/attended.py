"""The attended engine: `fab run` in this process (a thread), one instance at a time, the sshd
fixture standing in for every instance moto launches. Checkpoints stay on the instance's disk: the
laptop pulls them at the notice and the replacement receives them."""

from __future__ import annotations

import json
import re
import shutil

from common.attempt import Attempt
from tests.e2e.engines import Finished
from tests.e2e.runkit import join_while_progressing, live_instances, start_fab_run
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
            # The notice comes at "Train batch 3": it stopped the run at steps 8-9 under load.
            "num_training_batches=40",
            "output_dir=trained_models/mr",
            "checkpoint_dir=trained_models/mr/checkpoint",
        ]
        self.run_dir = spot_host.root / "remote" / "runs" / "train"
        self.log = self.run_dir / "log"

    def start(self) -> None:
        self.thread, self.result = start_fab_run(self.config, self.dest, self.args)

    def training(self) -> None:
        wait_until(
            lambda: self.log.exists() and "Train batch 3:" in self.log.read_text(), 300, "attempt 1 to train"
        )
        (self.first,) = self.live()

    def live(self) -> list[str]:
        return [i["InstanceId"] for i in live_instances(self.ec2)]

    def notice(self) -> int:
        self.imds.mark_interruption()
        wait_until((self.run_dir / "preempted").exists, 90, "the watcher's preempted record")
        assert json.loads((self.run_dir / "preempted").read_text())["command_exit_code"] == 75
        self.imds.clear()  # the replacement gets no notice
        return int(re.search(r"stopped by \S+ at step (\d+)", self.log.read_text()).group(1))

    def take_back(self) -> None:
        # Every instance here is the same sshd host: once the laptop has the checkpoint, wipe the
        # old one, as a new instance's empty disk would be, so the resume must use what `fab run`
        # restores.
        events = lambda: json.loads((self.dest / "run.json").read_text())["events"]  # noqa: E731
        wait_until(lambda: any(e["event"] == "downloaded" for e in events()), 90, "the checkpoint download")
        shutil.rmtree(self.host.root / "remote" / "code" / "trained_models" / "mr" / "checkpoint")
        # AWS takes the instance back (two minutes after the notice in real life).
        self.ec2.terminate_instances(InstanceIds=[self.first])

    def finish(self) -> Finished:
        join_while_progressing(
            self.thread, self.host.root / "remote" / "runs" / "train" / "log", self.dest / "run.json"
        )
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
        assert any(e["event"] == "checkpoint-restored" for e in history["events"])
        assert (self.dest / "checkpoint" / "last.pt").exists()
        assert "run job: finished after 2 attempts on 2 instances" in done.out
        assert "1 interruption, steps lost to interruptions 0" in done.out
        assert a1["cost_usd"] is not None and history["total_cost_usd"] >= a1["cost_usd"]
