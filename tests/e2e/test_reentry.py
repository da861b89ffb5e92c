"""Attended `fab run` re-entry against real peers (moto, sshd, the real trainer): the laptop's
`fab run` process is killed mid-run (SIGKILL: no Ctrl-C handling, run.json still says running);
`fab run --name job` again picks the running attempt up and watches it to the end: no refusal,
no second instance."""

from __future__ import annotations

import json

from tests.e2e.runkit import (
    fab_run_process,
    join_while_progressing,
    launched_ids,
    live_instances,
    start_fab_run,
)
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN


def test_fab_run_again_picks_up_a_journey_whose_laptop_process_was_killed(
    cloud, spot_host, tiny_dataset, tmp_path, capfd
):
    ec2, config = cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        "num_training_batches=40",
        "output_dir=trained_models/re",
        "checkpoint_dir=trained_models/re/checkpoint",
    ]
    proc = fab_run_process(config, dest, args, stdin=None)
    log = spot_host.root / "remote" / "runs" / "train" / "log"
    try:
        wait_until(lambda: log.exists() and "Train batch 2:" in log.read_text(), 120, "training to start")
    finally:
        proc.kill()  # the laptop process dies with no chance to clean up
        proc.communicate()
    before = json.loads((dest / "run.json").read_text())
    assert before["status"] == "running" and before["attempts"][0]["outcome"] == "running"
    (first,) = launched_ids(ec2)

    thread, result = start_fab_run(config, dest, args)
    join_while_progressing(thread, log, dest / "run.json")
    out = capfd.readouterr().out
    assert not thread.is_alive() and result == {}, (result, out[-3000:])
    assert f"picking up run job: attempt 1 on {first}" in out
    assert "already exists" not in out
    history = json.loads((dest / "run.json").read_text())
    assert history["status"] == "finished" and [a["outcome"] for a in history["attempts"]] == ["finished"]
    assert any(e["event"] == "picked-up" for e in history["events"])
    assert "run job: finished after 1 attempt on 1 instance" in out
    assert launched_ids(ec2) == {first}  # no second machine
    assert live_instances(ec2) == []
