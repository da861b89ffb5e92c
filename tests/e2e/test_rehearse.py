"""`fab rehearse` end to end: an attended `fab run` on moto + the sshd host, its instance interrupted
through AWS FIS. FIS is not in moto: its documented responses are injected on the real client at the
botocore level (tests/peers/fis.py), and the experiment's effect is played by the IMDS stand-in (the
notice) and moto (the termination, once the watcher has the checkpoint in S3)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

from common import aws
from ec2.cloud import fis
from tasks import rehearse as rehearse_task
from tests.e2e.rehearsekit import check_report
from tests.e2e.runkit import join_while_progressing, start_fab_run
from tests.peers.fis import FisStandIn
from tests.peers.iam_lint import findings
from tests.peers.imds import wait_until
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]


def test_rehearse_interrupts_an_attended_run_and_reports_its_recovery(
    cloud, spot_host, imds, tiny_dataset, tmp_path, capfd
):
    ec2, config = cloud
    dest = tmp_path / "out"
    args = [
        *TINY_TRAIN,
        f"dataset.dataset_dir={tiny_dataset}",
        # The rehearsal (FIS role, the IAM-lag retry, template, experiment) reaches the run 3-4 s
        # after "Train batch 3" (stopped at 18-34 on this loaded box): 180 steps of batch 2 keep
        # the margin of the 120 of batch 4 on an idle machine, where a step takes ~0.05 s.
        "num_training_batches=180",
        "output_dir=trained_models/rh",
        "checkpoint_dir=s3://spot-ckpt/job/checkpoint",
    ]
    thread, result = start_fab_run(config, dest, args)
    run_dir = spot_host.root / "remote" / "runs" / "train"
    log = run_dir / "log"
    wait_until(lambda: log.exists() and "Train batch 3:" in log.read_text(), 90, "attempt 1 to train")
    first = json.loads((dest / "run.json").read_text())["attempts"][0]["instance_id"]

    # AWS takes the instance two minutes after the notice; here, once the laptop has seen the run
    # stop on it (the "interrupted" event), which is all those minutes are for.
    def seen_stopping() -> bool:
        events = json.loads((dest / "run.json").read_text())["events"]
        return any(e["event"] == "interrupted" for e in events)

    stand_in = FisStandIn(aws.client("fis", "us-east-1", None), imds, ec2, safe=seen_stopping)
    stand_in.refuse_starts = 1  # the role was made a moment ago: FIS cannot assume it yet
    rehearse_task.rehearse(Context(), name="job", config=str(config), dest=str(dest), poll=0.3)
    out = capfd.readouterr().out
    (tmp_path / "rehearse.out").write_text(out)

    # The experiment FIS was asked for: that instance by id, the action, a two-minute notice.
    operations = [op for op, _ in stand_in.requests]
    assert operations[:3] == ["CreateExperimentTemplate", "StartExperiment", "StartExperiment"]
    assert operations[-1] == "DeleteExperimentTemplate"
    template = stand_in.requests[0][1]
    (target,) = template["targets"].values()
    assert target["resourceType"] == "aws:ec2:spot-instance"
    assert target["resourceArns"] == [f"arn:aws:ec2:us-east-1:123456789012:instance/{first}"]
    (action,) = template["actions"].values()
    assert action["actionId"] == "aws:ec2:send-spot-instance-interruptions"
    assert action["parameters"] == {"durationBeforeInterruption": "PT2M"}
    assert template["stopConditions"] == [{"source": "none"}]
    assert stand_in.terminated == [first]
    assert "FIS does not see role spotrun-fis-us-east-1 yet (IAM propagates)" in out

    # The role: trusts FIS only, may interrupt spotrun's instances only, and passes the linter.
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

    # The report, from the run's own record: every phase timed, nothing lost, a cost.
    assert "rehearsal of a attended run" not in out
    check_report(out, "attended", first)

    join_while_progressing(thread, log, dest / "run.json")
    assert not thread.is_alive() and result == {}, (result, capfd.readouterr().out[-3000:])
    history = json.loads((dest / "run.json").read_text())
    assert [a["outcome"] for a in history["attempts"]] == ["preempted", "finished"]
    assert history["steps_lost"] == [0]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            ["region=ap-southeast-3"],
            "AWS FIS cannot interrupt spot instances in ap-southeast-3 (Asia Pacific (Jakarta)",
        ),
        (
            ["region=me-central-1"],
            "AWS FIS cannot interrupt spot instances in me-central-1 (Middle East (UAE)",
        ),
    ],
)
def test_a_region_fis_cannot_interrupt_in_is_refused_in_one_line(
    aws_env, tmp_path, capsys, settings, expected
):
    with pytest.raises(Exit) as e:
        rehearse_task.rehearse(Context(), name="job", set_=settings)
    err = capsys.readouterr().err
    assert e.value.code != 0 and expected in err and len(err.strip().splitlines()) == 1, err
