"""Which cluster run `fab run --nodes N --name X` picks up again (ec2/journey/cluster_reentry.py),
against moto: the members recorded in run.json and the instances tagged with the cluster's name
must be the same run's, a member AWS took back meanwhile is handed to the replace-node strategy,
anything else is refused in one line. The whole journey is tests/e2e/test_cluster_reentry.py."""

from __future__ import annotations

import pytest

from common.attempt import Attempt, Outcome, RunStatus
from ec2.errors import ConfigError
from ec2.journey import cluster_reentry, history, reentry
from ec2.journey.stages import Plan
from tests.peers.moto_ec2 import config

PLAN = Plan(command="python -m ml.train --config configs/demo.yaml", train_config="configs/demo.yaml")


def member(ec2, ami: str, node: int) -> str:
    """An instance tagged as node `node` of cluster job, as `fab run --nodes` launches it
    (ec2/cloud/cluster.py), straight in moto: the launch itself is tests/ec2/test_cluster.py's."""
    tags = {"Name": f"job-{node}", "spotrun:name": f"job-{node}", "spotrun:cluster": "job"}
    tags["spotrun:node"] = str(node)
    return ec2.run_instances(
        ImageId=ami,
        InstanceType="g5.xlarge",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "us-east-1a"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )["Instances"][0]["InstanceId"]


@pytest.fixture
def left(home, ec2_client, dlami, tmp_path):
    """A two-node cluster in moto and the run.json a laptop that left it wrote."""
    cfg = config("instance_types=[g5.xlarge]", "zones=[us-east-1a]")
    ids = [member(ec2_client, dlami, k) for k in range(2)]
    h = history.RunHistory(
        name="job",
        command=PLAN.command,
        path=str(history.history_path(tmp_path)),
        nodes=2,
        status=RunStatus.INTERRUPTED,
        attempts=[Attempt(1, outcome=Outcome.RUNNING, nodes=2, instance_ids=ids)],
        members=[
            history.Member(k, iid, "g5.xlarge", "us-east-1a", "spot", outcome=Outcome.LEFT_RUNNING)
            for k, iid in enumerate(ids)
        ],
    )
    h.save()
    return cfg, ids, tmp_path


def test_the_members_left_running_are_watched_again(left):
    cfg, ids, outputs = left
    said = []
    picked = cluster_reentry.pick_up(cfg, "job", 2, PLAN, outputs, out=said.append)
    assert [m.record.instance_id for m in picked.machines] == ids and picked.lost == []
    assert {m.outcome for m in picked.history.members} == {Outcome.RUNNING}  # the fleet's live ones
    assert said == [
        f"picking up run job: attempt 1 on 2 nodes (job-0 {ids[0]}, job-1 {ids[1]}); watching it again"
    ]


def test_a_member_taken_back_meanwhile_is_handed_to_the_replacement(left, ec2_client):
    cfg, ids, outputs = left
    ec2_client.terminate_instances(InstanceIds=[ids[1]])
    said = []
    picked = cluster_reentry.pick_up(cfg, "job", 2, PLAN, outputs, out=said.append)
    assert picked.lost == [1] and picked.machines[1].record.instance_id == ids[1]
    assert f"job-1 {ids[1]} is gone (taken back while the laptop was away): replaced" in said[0]


@pytest.mark.parametrize(
    ("nodes", "plan", "why"),
    [
        (3, PLAN, "run job is still open on 2 nodes"),
        (1, PLAN, "run job is still open on 2 nodes"),
        (
            2,
            Plan(command="python -m ml.train --config other.yaml"),
            "it has configs/demo.yaml where this one has other.yaml",
        ),
    ],
)
def test_another_n_or_command_is_refused(left, nodes, plan, why):
    cfg, _, outputs = left
    with pytest.raises(ConfigError, match=why):
        cluster_reentry.pick_up(cfg, "job", nodes, plan, outputs)


def test_a_foreign_instance_in_the_cluster_is_refused_not_adopted(left, ec2_client, dlami):
    cfg, _, outputs = left
    foreign = member(ec2_client, dlami, 2)
    with pytest.raises(
        ConfigError, match=f"job-2 \\({foreign}\\) is running in cluster job but not a member"
    ):
        cluster_reentry.pick_up(cfg, "job", 2, PLAN, outputs)


def test_a_run_that_ended_is_not_picked_up(left):
    cfg, _, outputs = left
    h = history.load(history.history_path(outputs))
    h.status, h.attempts[0].outcome = RunStatus.FINISHED, Outcome.FINISHED
    h.save()
    assert cluster_reentry.pick_up(cfg, "job", 2, PLAN, outputs) is None


def test_a_run_the_laptop_lost_sight_of_is_still_open_for_one_instance_and_a_cluster(tmp_path):
    """An error while watching marks the run failed but leaves its instances running with the
    attempt open, and says `fab run` again picks it up: both re-entries must agree."""
    cluster = history.RunHistory(
        name="job",
        nodes=2,
        status=RunStatus.FAILED,
        attempts=[Attempt(1, outcome=Outcome.RUNNING, nodes=2, instance_ids=["i-0", "i-1"])],
    )
    one = history.RunHistory(
        name="job", status=RunStatus.FAILED, attempts=[Attempt(1, instance_id="i-0", outcome=Outcome.RUNNING)]
    )
    assert cluster_reentry.open_cluster_attempt(cluster) is cluster.attempts[0]
    assert reentry.open_attempt(one) is one.attempts[0]
    one.attempts[0].outcome = Outcome.FAILED  # failed by itself: closed
    assert reentry.open_attempt(one) is None
