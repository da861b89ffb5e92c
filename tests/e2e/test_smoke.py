"""`fab smoke`: the whole chain on moto + the sshd host (the demo, shortened), the rehearsal's AWS FIS
answered at the botocore level (tests/peers/fis.py: moto lacks FIS) and its effect played by the
IMDS stand-in and moto; and `--dry-run`, which must not send AWS a single mutating request (the gate
in front of moto sees every request)."""

from __future__ import annotations

import json
import re

import pytest
from invoke import Context
from invoke.exceptions import Exit

from common import aws
from tasks import rehearse as tasks
from tests.e2e.detachkit import REPO
from tests.peers.fis import FisStandIn
from tests.peers.trainkit import TINY_TRAIN

READS = re.compile(r"^(Describe|Get|List|Head)|^(GET|HEAD)$")


def test_dry_run_prints_every_stage_and_sends_aws_nothing_that_changes_anything(aws_env, aws_gate, capsys):
    before = len(aws_gate.seen)
    tasks.smoke(Context(), uri="s3://my-bucket/smoke", dry_run=True)
    out = capsys.readouterr().out
    stages = [
        "doctor",
        "sync the demo",
        "launch",
        "setup",
        "train",
        "rehearse",
        "resume",
        "download",
        "terminate",
    ]
    for k, stage in enumerate(stages, 1):
        assert re.search(rf"^  {k}\. {stage} ", out, re.M), out
    assert out.count("AWS: ") == len(stages)
    assert "ec2:RunInstances" in out and "fis:StartExperiment" in out and "ec2:TerminateInstances" in out
    sent = aws_gate.seen[before:]
    assert [call for call in sent if not READS.search(call[1])] == []


@pytest.mark.fresh_setup  # the first-day command: the instance is new, setup runs in full
def test_smoke_runs_the_whole_chain_and_leaves_nothing_running(cloud, imds, tmp_path, capfd):
    ec2, config = cloud
    dest = tmp_path / "out"

    def seen_stopping() -> bool:  # AWS's two minutes, until the laptop has seen the run stop
        path = dest / "run.json"
        return path.exists() and any(
            e["event"] == "interrupted" for e in json.loads(path.read_text())["events"]
        )

    stand_in = FisStandIn(aws.client("fis", "us-east-1", None), imds, ec2, safe=seen_stopping)
    tasks.smoke(
        Context(),
        uri="s3://spot-ckpt/smoke",
        config=str(config),
        dest=str(dest),
        args=" ".join([*TINY_TRAIN, "num_training_batches=120"]),
        setup_python=str(REPO / ".venv/bin/python"),
        no_gpu=True,
        poll=0.5,
        imds_poll=0.2,
        # At the start: the watcher holds the notice until the trainer has its handlers, and 120
        # tiny steps take only ~6 s on an idle machine (a later rehearsal once found the run
        # finished when this test ran alone).
        rehearse_after=0,
    )
    out = capfd.readouterr().out
    (tmp_path / "smoke.out").write_text(out)
    verdicts = re.findall(r"^smoke: (.{14}) (\S+)", out, re.M)
    assert [(stage.strip(), verdict) for stage, verdict in verdicts] == [
        (stage, "ok")
        for stage in [
            "doctor",
            "sync the demo",
            "launch",
            "setup",
            "train",
            "rehearse",
            "resume",
            "download",
            "terminate",
        ]
    ], out[-4000:]
    assert re.search(
        r"^smoke passed: 9/9 stages ok; total cost \$\d+\.\d{4} \(under the goal of \$0\.30\) = "
        r"instances \$\d+\.\d{4} \+ AWS FIS \$0\.[12]000$",
        out,
        re.M,
    ), out[-2000:]
    assert len(stand_in.terminated) == 1
    live = [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]
    assert live == []
    history = json.loads((dest / "run.json").read_text())
    assert [a["outcome"] for a in history["attempts"]] == ["preempted", "finished"]
    assert history["checkpoint_dir"] == "s3://spot-ckpt/smoke/checkpoints"


def test_a_failed_stage_fails_the_smoke_in_one_line_and_launches_nothing(cloud, tmp_path, capsys):
    ec2, config = cloud
    with pytest.raises(Exit) as e:
        tasks.smoke(
            Context(), uri="s3://no-such-bucket-here/smoke", config=str(config), dest=str(tmp_path / "o")
        )
    out, err = capsys.readouterr()
    assert e.value.code != 0
    assert re.search(r"^smoke: doctor +FAILED", out, re.M) or re.search(
        r"^smoke: sync the demo +FAILED", out, re.M
    ), out
    assert "the smoke failed" in err
    launched = [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if any(t["Key"] == "spotrun:name" for t in i.get("Tags", []))
    ]
    assert launched == []
