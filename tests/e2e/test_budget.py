"""A run's budget and deadline end to end (ec2/journey/budget.py): `fab run` in a thread against
moto's server (EC2, S3), the sshd host standing in for every instance, the loopback IMDS for the
spot notice. on_demand_after and deadline: after the interruption the next instance is launched
on-demand (moto lists a spot instance with InstanceLifecycle "spot" and an on-demand one without
it), and the checkpoint the laptop pulled at the notice is restored onto the replacement's empty
disk. max_cost_usd: the spot price is injected as DescribeSpotPriceHistory documents it
(tests/peers/prices.py; moto prices every pool at $0.00001/h) so high that the cap is reached at the
first step, and the run stops with a checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch

from tests.e2e.runkit import join_while_progressing, start_fab_run
from tests.peers import prices
from tests.peers.hold import Held
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
LIST_PRICES = {"g4dn.xlarge": "0.526", "g5.xlarge": "1.006"}  # us-east-1 on-demand, Linux


def fab_run(config: Path, dest: Path, args: list[str], sets: list[str]) -> tuple[threading.Thread, dict]:
    """`fab run --set ...` in a thread; its Exit code or error lands in the dict."""
    return start_fab_run(config, dest, args, set_=sets)


def lifecycle(ec2, instance_id: str) -> str | None:
    (r,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return r["Instances"][0].get("InstanceLifecycle")


def events(dest: Path) -> list[dict]:
    path = dest / "run.json"
    return json.loads(path.read_text())["events"] if path.exists() else []


def interrupt_first_attempt(ec2, spot_host, imds, dest: Path) -> None:
    """AWS's side of one interruption: the notice, then the instance taken back. Every instance here
    is the same sshd host: once the laptop has the checkpoint, the old one is wiped, as a new
    instance's empty disk would be, so the resume must use what `fab run` restores."""
    run_dir = spot_host.root / "remote" / "runs" / "train"
    # The trainer held still until the notice reaches it (tests/peers/hold.py): an idle fast
    # machine would otherwise finish the run first.
    with Held(run_dir) as held:
        imds.mark_interruption()
        held.go_once_signalled(run_dir)
    wait_until((run_dir / "preempted").exists, 30, "the watcher's preempted record")
    imds.clear()  # the replacement gets no notice
    wait_until(lambda: any(e["event"] == "downloaded" for e in events(dest)), 30, "the checkpoint download")
    shutil.rmtree(spot_host.root / "remote" / "code" / "trained_models")
    (launched,) = [e for e in events(dest) if e["event"] == "launched"]
    ec2.terminate_instances(InstanceIds=[launched["instance_id"]])


def args_for(tiny_dataset, steps: int, folder: str) -> list[str]:
    return [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        f"num_training_batches={steps}",
        f"output_dir=trained_models/{folder}",
        f"checkpoint_dir=trained_models/{folder}/checkpoint",
    ]


def test_after_on_demand_after_interruptions_the_next_attempt_is_on_demand(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capfd
):
    ec2, config = cloud
    prices.inject({}, LIST_PRICES)  # the on-demand $/h the switch names (moto has no Pricing API)
    dest = tmp_path / "out"
    # The notice comes at "Train batch 3", the trainer held until it lands.
    thread, result = fab_run(config, dest, args_for(tiny_dataset, 40, "od"), ["on_demand_after=1"])
    log = spot_host.root / "remote" / "runs" / "train" / "log"
    training = lambda: log.exists() and "Train batch 3:" in log.read_text()  # noqa: E731
    wait_until(training, 90, "attempt 1 to train", every=0.02)
    interrupt_first_attempt(ec2, spot_host, imds, dest)

    join_while_progressing(thread, log, dest / "run.json")
    out = capfd.readouterr().out
    assert not thread.is_alive(), out[-3000:]
    assert result == {}, (result, out[-3000:])
    history = json.loads((dest / "run.json").read_text())
    a1, a2 = history["attempts"]
    assert (a1["market"], a2["market"]) == ("spot", "on-demand") and a2["outcome"] == "finished"
    assert lifecycle(ec2, a1["instance_id"]) == "spot" and lifecycle(ec2, a2["instance_id"]) is None
    assert (
        "1 interruption (on_demand_after: 1): the next attempt runs on-demand at $0.526/h (g4dn.xlarge)"
        in out
    )
    assert any(e["event"] == "on-demand" and e["interruptions"] == 1 for e in history["events"])
    # The checkpoint the laptop pulled at the notice, restored onto the replacement: no step lost.
    assert any(e["event"] == "checkpoint-restored" for e in history["events"])
    assert (dest / "checkpoint" / "last.pt").exists() and history["steps_lost"] == [0]
    assert f"at step {a1['last_step']}" in (dest / "run" / "log").read_text()
    # The ledger: attempt 2's billed time until it resumed is the interruption's cost.
    recovery = re.search(
        r"ledger attempt 2: \$[\d.]+ on steps kept, \$[\d.]+ lost \(recovery \$([\d.]+)", out
    )
    assert recovery and float(recovery.group(1)) > 0, out[-3000:]
    assert "lost to interruptions (recovery $" in out


def test_max_cost_usd_stops_the_run_with_a_checkpoint(cloud, spot_host, tiny_dataset, tmp_path, capfd):
    ec2, config = cloud
    # $3600/h is $1 a second: the cap of $2 is passed by the time the first step is logged.
    prices.inject({(t, "us-east-1a"): 3600.0 for t in LIST_PRICES}, LIST_PRICES)
    dest = tmp_path / "out"
    thread, result = fab_run(config, dest, args_for(tiny_dataset, 100000, "cap"), ["max_cost_usd=2"])
    join_while_progressing(thread, spot_host.root / "remote" / "runs" / "train" / "log", dest / "run.json")
    captured = capfd.readouterr()
    assert not thread.is_alive(), captured.out[-3000:]
    assert result == {"exit": 75}, (result, captured.out[-3000:], captured.err[-2000:])
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "stopped"
    (a1,) = history["attempts"]
    assert a1["outcome"] == "stopped" and a1["cost_usd"] >= 2
    stopped = re.search(r"stopped by \S+ at step (\d+)", (dest / "run" / "log").read_text())
    assert stopped, (dest / "run" / "log").read_text()[-2000:]
    step = int(stopped.group(1))
    # The checkpoint the trainer saved on the stop is on the laptop, at the step it stopped.
    ckpt = torch.load(dest / "checkpoint" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == step
    line = re.search(
        r"error: cost \$(\d+\.\d\d) reached max_cost_usd \$2: stopped at step (\d+)", captured.err
    )
    assert line and float(line.group(1)) >= 2 and int(line.group(2)) == step, captured.err[-2000:]
    assert (
        f"with a checkpoint ({dest / 'checkpoint'}); run again with a higher max_cost_usd to go on"
        in captured.err
    )
    assert lifecycle(ec2, a1["instance_id"]) == "spot"
    state = ec2.describe_instances(InstanceIds=[a1["instance_id"]])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] in ("shutting-down", "terminated")  # it bills no more


def test_a_missed_deadline_moves_the_next_attempt_to_on_demand(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capfd
):
    ec2, config = cloud
    prices.inject({}, LIST_PRICES)
    dest = tmp_path / "out"
    # Any projection misses a deadline seconds away (setup alone takes longer). The projection
    # needs MIN_STEPS measured steps: 140 steps leave attempt 1 far from done when it is made (the
    # notice stopped it at steps 11-34 on this loaded box; an idle one runs more steps a second).
    deadline = (datetime.now(UTC) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    thread, result = fab_run(config, dest, args_for(tiny_dataset, 140, "dl"), [f"deadline={deadline}"])
    projected = lambda: any(e["event"] == "deadline-miss" for e in events(dest))  # noqa: E731
    wait_until(projected, 120, "the projection", every=0.02)
    interrupt_first_attempt(ec2, spot_host, imds, dest)

    join_while_progressing(thread, spot_host.root / "remote" / "runs" / "train" / "log", dest / "run.json")
    out = capfd.readouterr().out
    assert not thread.is_alive(), out[-3000:]
    assert result == {}, (result, out[-3000:])
    history = json.loads((dest / "run.json").read_text())
    a1, a2 = history["attempts"]
    assert (a1["market"], a2["market"]) == ("spot", "on-demand")
    assert lifecycle(ec2, a2["instance_id"]) is None
    said = re.search(
        r"projected finish (\S+ \S+) UTC \((\d+) steps left x ([\d.]+) s \+ [\d.]+ expected interruptions "
        r"x \d+ s\) misses the deadline (\S+ \S+) UTC: the next attempt runs on-demand at \$0\.526/h",
        out,
    )
    assert said, out[-3000:]
    assert said.group(1) > said.group(4)
