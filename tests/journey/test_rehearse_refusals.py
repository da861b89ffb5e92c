"""`fab rehearse` refuses in one line, before it makes anything (no FIS role, no experiment): an
on-demand instance (FIS interrupts only spot ones), a run whose checkpoints are not in S3, a
cluster without --node, a region FIS cannot interrupt in; for each kind of run: an attended or
cluster run is a running `fab run`'s history (outputs/<name>/run.json) and its instances in moto, a
detached run its Auto Scaling group (tagged with its record's root), its S3 record and its
instance in moto. And the FIS role's policy passes the IAM linter."""

from __future__ import annotations

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

from common.attempt import Attempt, Outcome
from ec2.cloud import asg, fis
from ec2.journey import detach_nodes
from ec2.journey.history import RunHistory
from ec2.remote import detached
from tasks import rehearse as tasks
from tests.peers.fis import FisStandIn
from tests.peers.iam_lint import findings
from tests.peers.moto_ec2 import DLAMI_NAME, make_image


def _instance(ec2, spot: bool, node: int | None = None, name: str | None = None) -> str:
    image = make_image(ec2, DLAMI_NAME)
    extra = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    name = name or ("job" if node is None else f"job-{node}")
    tags = [{"Key": "spotrun:name", "Value": name}]
    if node is not None:
        tags += [{"Key": "spotrun:cluster", "Value": "job"}, {"Key": "spotrun:node", "Value": str(node)}]
    got = ec2.run_instances(
        ImageId=image,
        InstanceType="g5.xlarge",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        **extra,
    )
    return got["Instances"][0]["InstanceId"]


def _history(tmp_path, checkpoint_dir: str | None, *instance_ids: str) -> str:
    nodes = len(instance_ids)
    attempt = Attempt(1, outcome=Outcome.RUNNING)
    if nodes == 1:
        attempt.instance_id = instance_ids[0]
    else:
        attempt.instance_ids = list(instance_ids)
    h = RunHistory(
        "job", checkpoint_dir=checkpoint_dir, attempts=[attempt], nodes=nodes, path=str(tmp_path / "run.json")
    )
    h.save()
    return str(tmp_path)


def _refusal(capsys, **kw) -> str:
    with pytest.raises(Exit) as e:
        tasks.rehearse(Context(), name="job", **kw)
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0 and len(err.splitlines()) == 1, err
    # Nothing was made: no FIS role.
    roles = boto3.client("iam", region_name="us-east-1").list_roles(PathPrefix="/spotrun/")["Roles"]
    assert roles == []
    return err


def test_an_on_demand_instance_is_refused(ec2_client, tmp_path, capsys):
    dest = _history(tmp_path, "s3://spot-ckpt/job/checkpoint", _instance(ec2_client, spot=False))
    err = _refusal(capsys, dest=dest)
    assert "is an on-demand instance: AWS FIS interrupts only spot instances" in err


def test_a_run_without_an_s3_checkpoint_is_refused(ec2_client, tmp_path, capsys):
    dest = _history(tmp_path, "trained_models/x/checkpoint", _instance(ec2_client, spot=True))
    err = _refusal(capsys, dest=dest)
    assert "a rehearsed run keeps its checkpoints in S3" in err
    assert "checkpoint_dir is trained_models/x/checkpoint" in err


def test_a_cluster_needs_the_node_to_interrupt(ec2_client, tmp_path, capsys):
    ids = [_instance(ec2_client, spot=True, node=k) for k in range(2)]
    dest = _history(tmp_path, "s3://spot-ckpt/job/checkpoint", *ids)
    assert "is a 2-node cluster: pass --node K (0 to 1)" in _refusal(capsys, dest=dest)
    assert "--node 5: job has nodes 0 to 1" in _refusal(capsys, dest=dest, node=5)


CKPT = "s3://spot-ckpt/job/checkpoint"


def _detached(ec2, spot: bool, *, nodes: int = 1) -> None:
    """A running detached run `job`: its group (or, for a cluster, one per node, tagged as
    ec2.journey.detach_nodes finds them), its S3 record, its instance."""
    boto3.client("s3").create_bucket(Bucket="spot-ckpt")
    template = {"ImageId": "ami-12345678"}  # any id: the group launches nothing (desired 0)
    ec2.create_launch_template(LaunchTemplateName="spotrun-job", LaunchTemplateData=template)
    root = detached.root_for(CKPT, "job")
    groups = ["spotrun-job"] if nodes == 1 else [f"spotrun-job-{k}" for k in range(nodes)]
    for k, group in enumerate(groups):
        tags = {"spotrun:name": "job", asg.ROOT_TAG: root}
        if nodes > 1:
            tags |= {detach_nodes.RUN_TAG: "job", detach_nodes.NODE_TAG: str(k)}
        boto3.client("autoscaling").create_auto_scaling_group(
            AutoScalingGroupName=group,
            LaunchTemplate={"LaunchTemplateName": "spotrun-job", "Version": "$Latest"},
            MinSize=0,
            MaxSize=1,
            DesiredCapacity=0,
            AvailabilityZones=["us-east-1a"],
            Tags=[
                {"Key": k_, "Value": v, "PropagateAtLaunch": False, "ResourceId": group}
                | {"ResourceType": "auto-scaling-group"}
                for k_, v in tags.items()
            ],
        )
    iid = _instance(ec2, spot=spot, name="job")
    attempt = Attempt(1, iid, market="spot" if spot else "on-demand", outcome=Outcome.RUNNING)
    record = detached.DetachedRun(
        name="job", group=groups[0], region="us-east-1", root=root, command="true", checkpoint_dir=CKPT
    )
    record.status, record.attempts, record.nodes = "running", [attempt], nodes
    detached.save(boto3.client("s3"), record)


def test_a_cluster_node_on_demand_or_without_an_s3_checkpoint_is_refused(ec2_client, tmp_path, capsys):
    ids = [_instance(ec2_client, spot=k == 0, node=k) for k in range(2)]
    dest = _history(tmp_path, CKPT, *ids)
    assert f"{ids[1]} is an on-demand instance: AWS FIS interrupts only spot" in _refusal(
        capsys, dest=dest, node=1
    )
    dest = _history(tmp_path, "trained_models/x/checkpoint", *ids)
    assert "a rehearsed run keeps its checkpoints in S3" in _refusal(capsys, dest=dest, node=0)


def test_a_detached_run_on_an_on_demand_instance_is_refused(ec2_client, capsys):
    # A detached group switches to on-demand when spot capacity fails (detach.on_demand_switch).
    _detached(ec2_client, spot=False)
    assert "is an on-demand instance: AWS FIS interrupts only spot instances" in _refusal(capsys)
    assert "is a detached run of one instance; leave out --node" in _refusal(capsys, node=0)


def test_a_detached_cluster_is_refused_in_one_line(ec2_client, capsys):
    _detached(ec2_client, spot=True, nodes=2)
    assert "job is a detached cluster (fab run --detach --nodes)" in _refusal(capsys, node=1)


@pytest.mark.parametrize("kind", ["cluster", "detached"])
def test_a_region_fis_cannot_interrupt_in_is_refused_for_every_kind(ec2_client, tmp_path, capsys, kind):
    if kind == "detached":
        _detached(ec2_client, spot=True)
        kw = {}
    else:
        kw = {"dest": _history(tmp_path, CKPT, *[_instance(ec2_client, True, node=k) for k in range(2)])}
        kw["node"] = 1
    err = _refusal(capsys, set_=["region=cn-north-1"], **kw)
    assert "AWS FIS cannot interrupt spot instances in cn-north-1 (China (Beijing)" in err


def test_a_run_that_is_not_running_is_refused(ec2_client, tmp_path, capsys):
    assert "no run history at" in _refusal(capsys, dest=str(tmp_path))


def test_the_fis_role_trusts_fis_only_and_its_policy_is_clean():
    assert [s["Principal"] for s in fis.TRUST_POLICY["Statement"]] == [{"Service": "fis.amazonaws.com"}]
    document = fis.role_policy("aws", "123456789012", "us-east-1")
    assert findings(document) == []
    interrupt = next(s for s in document["Statement"] if s["Action"] == "ec2:SendSpotInstanceInterruptions")
    assert interrupt["Resource"] == "arn:aws:ec2:us-east-1:123456789012:instance/*"
    assert interrupt["Condition"] == {"Null": {"aws:ResourceTag/spotrun:name": "false"}}
    assert sorted(s["Action"] for s in document["Statement"]) == [
        "ec2:DescribeInstances",  # takes no resource; the action resolves its target with it
        "ec2:SendSpotInstanceInterruptions",
    ]


def test_fab_cleanup_removes_the_fis_role(ec2_client, capsys):
    from tasks import lifecycle

    client = boto3.client("iam", region_name="us-east-1")
    fis.ensure_role(client, "us-east-1", "arn:aws:iam::123456789012:user/dev", out=lambda _line: None)
    lifecycle.cleanup(Context())
    out = capsys.readouterr().out
    assert "deleted IAM role spotrun-fis-us-east-1\n" in out and "instance profile" not in out
    assert client.list_roles(PathPrefix="/spotrun/")["Roles"] == []


def test_a_ctrl_c_while_fis_waits_for_its_role_leaves_no_experiment_template(aws_env):
    """The template is made before the experiment starts, and StartExperiment is retried while IAM
    propagates a new role (seconds apart): a Ctrl-C in that wait deletes the template as a refusal
    does, so nothing of the rehearsal is left in the account (FIS stand-in: tests/peers/fis.py)."""
    client = boto3.client("fis", region_name="us-east-1")
    stand_in = FisStandIn(client, imds=None, ec2=None)
    stand_in.refuse_starts = 5  # the role is not visible to FIS yet

    def ctrl_c(_delay: float) -> None:
        raise KeyboardInterrupt

    arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    role = fis.Role("spotrun-fis-us-east-1", "arn:aws:iam::123456789012:role/spotrun-fis-us-east-1", False)
    with pytest.raises(KeyboardInterrupt):
        fis.start(client, arn, role, "job", out=lambda _line: None, sleep=ctrl_c)
    assert [op for op, _ in stand_in.requests] == [
        "CreateExperimentTemplate",
        "StartExperiment",
        "DeleteExperimentTemplate",
    ]
    assert stand_in.templates == {}
