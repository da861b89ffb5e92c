"""A detached cluster's meeting place and shared record in S3 (ec2/remote/detached_members.py), the
member boot's reading of its trainer's exit (ec2/remote/boot_nodes.py), and the laptop's view of
the members (ec2/journey/detach_nodes.py), against moto's S3 where S3 is involved."""

from __future__ import annotations

import threading

import boto3
import pytest

from common.attempt import Outcome, RunStatus
from ec2.cloud.userdata import build_detached_user_data
from ec2.journey import detach_nodes
from ec2.remote import detached
from ec2.remote import detached_members as members
from ec2.remote.boot_nodes import NodeBoot, outcome_for
from ec2.remote.imds import Identity

ROOT = "s3://meet/run-spotrun-job"


@pytest.fixture
def s3(aws_env):
    client = boto3.client("s3")
    client.create_bucket(Bucket="meet")
    detached.save(
        client,
        detached.DetachedRun(
            name="job", group="spotrun-job-0", region="us-east-1", root=ROOT, command="x", nodes=2
        ),
    )
    return client


def test_a_write_that_lost_the_race_is_made_again_on_the_new_record(s3):
    # Another writer (here `fab stop`'s plain save) lands between our read and our write: S3
    # refuses our If-Match write (412) and the change is applied again to what is there now.
    calls = []

    def change(state):
        calls.append(1)
        if len(calls) == 1:
            other = detached.load(s3, ROOT)
            other.stop_requested = True
            detached.save(s3, other)
        state.status = RunStatus.RUNNING

    members.update(s3, ROOT, change)
    final = detached.load(s3, ROOT)
    assert len(calls) == 2
    assert (final.status, final.stop_requested) == ("running", True)  # neither write lost


def test_each_boot_joins_the_attempt_its_node_has_not_joined_yet(s3):
    assert members.attempt_to_join(s3, ROOT, 0) == 1  # nobody yet: the first
    members.join(s3, ROOT, 1, 0, "i-a", "10.0.0.1")
    assert members.attempt_to_join(s3, ROOT, 1) == 1  # node 1 meets node 0 there
    members.join(s3, ROOT, 1, 1, "i-b", "10.0.0.2")
    # After attempt 1: the survivor (node 0) goes on to 2, and so does node 1's replacement,
    # whether it comes before the survivor joined 2 or after.
    assert members.attempt_to_join(s3, ROOT, 1) == 2
    members.join(s3, ROOT, 2, 0, "i-a", "10.0.0.1")
    assert members.attempt_to_join(s3, ROOT, 1) == 2
    members.join(s3, ROOT, 2, 1, "i-c", "10.0.0.3")
    joins, ends = members.read(s3, ROOT, 2)
    assert {k: j["private_ip"] for k, j in joins.items()} == {0: "10.0.0.1", 1: "10.0.0.3"} and ends == {}


def test_a_replaced_node_0_publishes_its_new_address_in_the_new_attempt(s3):
    members.join(s3, ROOT, 1, 0, "i-a", "10.0.0.1")
    members.join(s3, ROOT, 1, 1, "i-b", "10.0.0.2")
    members.join(s3, ROOT, 2, 1, "i-b", "10.0.0.2")  # the survivor waits in attempt 2
    assert members.attempt_to_join(s3, ROOT, 0) == 2
    members.join(s3, ROOT, 2, 0, "i-new", "10.0.0.9")
    assert members.read(s3, ROOT, 2)[0][0]["private_ip"] == "10.0.0.9"


def test_the_attempt_takes_its_members_worst_news_and_an_ended_run_stays_ended():
    state = detached.DetachedRun(name="job", group="g", region="r", root=ROOT, command="x", nodes=2)
    members.ended(state, 1, 1, Outcome.PREEMPTED, 75)
    members.ended(state, 1, 0, Outcome.LOST, 75)  # stopped at the step because node 1 was noticed
    [a] = state.attempts
    assert (a.outcome, a.nodes_lost, state.status) == ("preempted", [1], "interrupted")
    members.ended(state, 2, 0, Outcome.FAILED, 1)
    members.ended(state, 2, 1, Outcome.FINISHED, 0)
    assert (state.attempts[1].outcome, state.status) == ("failed", "failed")


@pytest.mark.parametrize(
    ("code", "noticed", "stop", "deadline", "outcome"),
    [
        (0, False, False, False, Outcome.FINISHED),
        (75, True, False, False, Outcome.PREEMPTED),  # its group is left for AWS to refill
        (75, False, False, False, Outcome.LOST),  # a notice reached another member: go on
        (75, False, True, False, Outcome.STOPPED),
        (75, False, False, True, Outcome.DEADLINE),
        (1, True, False, False, Outcome.FAILED),  # anything but 0 or 75 fails the run
    ],
)
def test_a_members_trainer_exit_reads_as(code, noticed, stop, deadline, outcome):
    assert outcome_for(code, noticed, stop, deadline) is outcome


def test_the_summary_has_one_member_per_instance_and_the_lost_one_marked():
    state = detached.DetachedRun(name="job", group="g", region="r", root=ROOT, command="x", nodes=2)
    members.started(state, 1, {0: {"instance_id": "i-a"}, 1: {"instance_id": "i-b"}}, {"gpus": 0})
    members.ended(state, 1, 1, Outcome.PREEMPTED, 75)
    members.started(state, 2, {0: {"instance_id": "i-a"}, 1: {"instance_id": "i-c"}}, {"gpus": 0})
    members.ended(state, 2, 0, Outcome.FINISHED, 0)
    found = detach_nodes.members_of(state.attempts, True, 2)
    assert [(m.node, m.instance_id, m.outcome) for m in found] == [
        (0, "i-a", "terminated"),
        (1, "i-b", "lost"),
        (1, "i-c", "terminated"),
    ]


def test_each_member_boots_as_its_node_and_may_stop_only_the_runs_groups():
    text = build_detached_user_data(
        1,
        30,
        22,
        root=ROOT,
        bundle_uri=f"{ROOT}/b.tgz",
        remote_dir="~/spotrun",
        login_user="ubuntu",
        group="spotrun-job-1",
        region="us-east-1",
        node=1,
    )
    assert "-m ec2.remote.boot_nodes --node 1 --root" in text and "--group spotrun-job-1" in text
    [statement] = detach_nodes.role_statements("us-east-1", "123456789012", "job", 2)
    assert [r.rsplit("/", 1)[1] for r in statement["Resource"]] == ["spotrun-job-0", "spotrun-job-1"]


@pytest.fixture
def groups(s3):
    """The run's two member groups in moto (one instance each)."""
    ec2, autoscaling = boto3.client("ec2"), boto3.client("autoscaling")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    for k in range(2):
        ec2.create_launch_template(
            LaunchTemplateName=f"spotrun-job-{k}",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=f"spotrun-job-{k}",
            LaunchTemplate={"LaunchTemplateName": f"spotrun-job-{k}", "Version": "$Latest"},
            MinSize=0,
            MaxSize=1,
            DesiredCapacity=1,
            VPCZoneIdentifier=subnet,
        )
    return autoscaling


def _boot(s3, autoscaling, node: int):
    identity = Identity("i-0", "g5.xlarge", "us-east-1a", "spot", "us-east-1")
    boot = NodeBoot(ROOT, identity, node, "10.0.0.1", shutdown="true", poll_s=0.05, s3=s3, asg=autoscaling)
    boot.state = detached.load(s3, ROOT)
    return boot


def _desired(autoscaling) -> list[int]:
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["spotrun-job-0", "spotrun-job-1"])
    return [
        g["DesiredCapacity"]
        for g in sorted(found["AutoScalingGroups"], key=lambda g: g["AutoScalingGroupName"])
    ]


def test_fab_stop_while_a_member_waits_for_the_others_stops_every_members_group(s3, groups):
    boot = _boot(s3, groups, 0)
    members.join(s3, ROOT, 1, 0, "i-0", "10.0.0.1")
    threading.Timer(
        0.3, lambda: members.update(s3, ROOT, lambda s: setattr(s, "stop_requested", True))
    ).start()
    why = boot.wait_members(1)
    assert why == "the run was stopped"
    boot.end_run(RunStatus.STOPPED, why)
    assert detached.load(s3, ROOT).status == "stopped"
    assert _desired(groups) == [0, 0]  # not only its own: the run is over for every member


def test_a_member_that_never_joins_gives_the_run_up_and_says_which(s3, groups):
    boot = _boot(s3, groups, 0)
    boot.state.join_timeout_s = 0.3
    members.join(s3, ROOT, 1, 0, "i-0", "10.0.0.1")
    why = boot.wait_members(1)
    assert why.startswith("node(s) 1 did not join attempt 1 in 0.3 s"), why
    boot.end_run(RunStatus.GAVE_UP, why)  # as its run() does: no member runs alone
    assert detached.load(s3, ROOT).status == "gave-up"
    assert _desired(groups) == [0, 0]


def test_a_failed_member_ends_the_run_for_every_member(s3, groups):
    boot = _boot(s3, groups, 1)
    boot.finish(1, outcome_for(1, False, False, False), "trainer exited 1", 1)
    assert detached.load(s3, ROOT).status == "failed"
    assert _desired(groups) == [0, 0]


def test_a_members_template_joins_the_members_group_and_gets_an_efa_interface_on_efa_types():
    base = {"ImageId": "ami-1", "SecurityGroupIds": ["sg-ssh"]}
    plain = detach_nodes.member_template_data(base, "sg-members", efa=False)
    assert plain["SecurityGroupIds"] == ["sg-ssh", "sg-members"] and "NetworkInterfaces" not in plain
    efa = detach_nodes.member_template_data(base, "sg-members", efa=True)
    # With an interface, the groups go in it (a template refuses both), and no subnet: the group's.
    assert "SecurityGroupIds" not in efa
    assert efa["NetworkInterfaces"] == [
        {
            "DeviceIndex": 0,
            "Groups": ["sg-ssh", "sg-members"],
            "InterfaceType": "efa",
            "AssociatePublicIpAddress": True,
            "DeleteOnTermination": True,
        }
    ]
