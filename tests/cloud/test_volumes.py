"""The workspace volume on moto's server: created encrypted and tagged by the first launch, attached,
kept by `fab terminate`, reattached by the next launch in its zone (and only there), moved, grown,
deleted only by `fab volume-delete`; bad input is one line. Settings are read back from
describe_volumes, not from our own calls.

moto accepts an attach across zones (AWS refuses it: InvalidVolume.ZoneMismatch), so these tests
check the zone the instance was launched in, not whether the attach went through.
"""

from __future__ import annotations

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

from ec2.cloud import volumes
from ec2.cloud.launch import launch
from ec2.errors import CapacityError, ConfigError, ToolkitError
from tasks import lifecycle
from tasks import volumes as volume_tasks
from tests.peers.moto_ec2 import config

WS = ["instance_types=[g5.xlarge]", "volume_name=ws", "volume_gb=50"]


def described(ec2, name="ws", tag=volumes.VOLUME_TAG):
    found = ec2.describe_volumes(Filters=[{"Name": f"tag:{tag}", "Values": [name]}])["Volumes"]
    assert len(found) == 1, found
    return found[0]


def zone_of(ec2, instance_id):
    raw = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return raw["Placement"]["AvailabilityZone"]


def fab_config(monkeypatch, tmp_path, *overrides):
    """Tasks read configs/aws.yaml: write one with the test settings and run from its folder."""
    (tmp_path / "configs").mkdir()
    lines = ["ssh_cidr: 203.0.113.7/32", "ami_owners: [self]", "instance_types: [g5.xlarge]", *overrides]
    (tmp_path / "configs" / "aws.yaml").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)


def test_first_launch_creates_it_terminate_keeps_it_next_launch_reattaches_in_its_zone(
    home, ec2_client, dlami, capsys, monkeypatch, tmp_path
):
    first = launch(config(*WS, "zones=[us-east-1c]", "tags={team: bci}"), "a", wait_ssh=False)
    out = capsys.readouterr().out
    assert "volume ws: none yet; this launch creates it (50 GiB gp3, encrypted)" in out
    vol = described(ec2_client)
    assert vol["Encrypted"] is True and vol["VolumeType"] == "gp3" and vol["Size"] == 50
    assert vol["AvailabilityZone"] == "us-east-1c" == zone_of(ec2_client, first.instance_id)
    tags = {t["Key"]: t["Value"] for t in vol["Tags"]}
    assert (
        tags["spotrun:volume"] == "ws"
        and tags["spotrun:owner"].startswith("arn:aws:")
        and tags["team"] == "bci"
    )
    assert [(a["InstanceId"], a["State"]) for a in vol["Attachments"]] == [(first.instance_id, "attached")]
    assert "not mounted (SSH not waited for): `fab volume-mount --name a`" in out

    fab_config(monkeypatch, tmp_path)
    lifecycle.terminate(Context(), name="a", yes=True)
    out = capsys.readouterr().out
    assert "kept volume ws (" in out and "$4.00/month" in out and "fab volume-delete --name ws --yes" in out
    kept = described(ec2_client)
    assert kept["VolumeId"] == vol["VolumeId"] and kept["State"] == "available" and not kept["Attachments"]

    # No zones configured: without the volume the cheapest zone would do; with it, only us-east-1c.
    second = launch(config(*WS), "b", wait_ssh=False)
    out = capsys.readouterr().out
    assert f"volume ws: {vol['VolumeId']} (50 GiB) in us-east-1c, so the instance goes there" in out
    assert "[1/1] trying g5.xlarge in us-east-1c" in out
    assert zone_of(ec2_client, second.instance_id) == "us-east-1c"
    again = described(ec2_client)
    assert again["VolumeId"] == vol["VolumeId"]
    assert [a["InstanceId"] for a in again["Attachments"]] == [second.instance_id]

    # fab status lists it: size, zone, attachment, $/month.
    lifecycle.status(Context(), no_runs=True)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("ws "))
    for part in (vol["VolumeId"], "50 GiB", "us-east-1c", "in-use", f"{second.instance_id} (b)", "$4.00*"):
        assert part in row


def test_deleted_only_by_volume_delete(home, ec2_client, dlami, capsys, monkeypatch, tmp_path):
    first = launch(config(*WS), "a", wait_ssh=False)
    fab_config(monkeypatch, tmp_path)
    c = Context()
    with pytest.raises(Exit):
        volume_tasks.volume_delete(c, name="ws", yes=True)
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot delete volume ws: it is attached to {first.instance_id} (a)")
    assert err.count("\n") == 1
    lifecycle.terminate(c, name="a", yes=True)
    assert described(ec2_client)["State"] == "available"
    with pytest.raises(Exit):  # no terminal to ask on, and no --yes
        volume_tasks.volume_delete(c, name="ws")
    assert "needs confirmation" in capsys.readouterr().err
    volume_tasks.volume_delete(c, name="ws", yes=True)
    assert "deleted volume ws" in capsys.readouterr().out
    assert not ec2_client.describe_volumes(Filters=[{"Name": "tag:spotrun:volume", "Values": ["ws"]}])[
        "Volumes"
    ]


def test_no_capacity_in_its_zone_says_so_and_offers_volume_move(home, ec2_client, dlami, refusing):
    vol = volumes.create_volume(ec2_client, config(*WS), "ws", "us-east-1b", "arn:aws:iam::1:user/t")
    wrapper = refusing(lambda attempt: "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError) as err:
        launch(config(*WS), "a", wait_ssh=False)
    assert [a[1] for a in wrapper.attempts] == ["us-east-1b"]  # nowhere else
    assert f"no capacity in us-east-1b, where volume {vol.name} lives" in str(err.value)
    assert "`fab volume-move --name ws --zone ZONE`" in str(err.value)
    assert str(err.value).endswith("[InsufficientInstanceCapacity]")


def test_bad_input_is_one_line(home, ec2_client, dlami):
    first = launch(config(*WS), "a", wait_ssh=False)
    with pytest.raises(
        ToolkitError, match=rf"volume ws \(vol-\w+\) is attached to {first.instance_id} \(a\)"
    ):
        launch(config(*WS), "b", wait_ssh=False)
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[first.instance_id])
    with pytest.raises(ConfigError, match="volume_gb 20 is smaller than volume ws \\(50 GiB\\)"):
        launch(config("instance_types=[g5.xlarge]", "volume_name=ws", "volume_gb=20"), "b", wait_ssh=False)
    zone = described(ec2_client)["AvailabilityZone"]
    other = "us-east-1a" if zone != "us-east-1a" else "us-east-1b"
    with pytest.raises(ConfigError, match=f"volume ws is in {zone}, which zones \\({other}\\) leaves out"):
        launch(config(*WS, f"zones=[{other}]"), "b", wait_ssh=False)
    with pytest.raises(ConfigError, match=r"volume_gb must be from 1 to 16384 \(GiB of gp3\), got 0"):
        config(*WS, "volume_gb=0")


def test_a_volume_in_another_region_is_one_line(home, ec2_client, dlami):
    """A volume this laptop made in eu-west-1 (the local note of its region), asked for in us-east-1."""
    eu = boto3.client("ec2", region_name="eu-west-1")
    volumes.create_volume(eu, config(*WS), "ws", "eu-west-1a", "arn:aws:iam::1:user/t")
    with pytest.raises(ConfigError) as err:
        launch(config(*WS), "a", wait_ssh=False)
    assert str(err.value) == (
        "volume ws is in eu-west-1, not in us-east-1: an EBS volume cannot leave its region; "
        "launch there (--set region=eu-west-1) or choose another volume_name"
    )
    assert not ec2_client.describe_volumes(Filters=[{"Name": "tag:spotrun:volume", "Values": ["ws"]}])[
        "Volumes"
    ]
    # Deleted there: the note is stale, AWS is the truth, and a launch here creates its own.
    eu.delete_volume(VolumeId=described(eu)["VolumeId"])
    launch(config(*WS), "a", wait_ssh=False)
    assert described(ec2_client)["AvailabilityZone"].startswith("us-east-1")


def test_volume_move_copies_it_and_the_next_launch_finishes_the_move(home, ec2_client, dlami, capsys):
    cfg = config(*WS)
    old = volumes.create_volume(ec2_client, cfg, "ws", "us-east-1a", "arn:aws:iam::1:user/t")
    new = volumes.move(ec2_client, cfg, "ws", "us-east-1", "us-east-1d", "arn:aws:iam::1:user/t")
    assert described(ec2_client)["VolumeId"] == new.volume_id
    raw_new = described(ec2_client)
    assert raw_new["AvailabilityZone"] == "us-east-1d" and raw_new["Encrypted"] and raw_new["Size"] == 50
    snapshot_id = raw_new["SnapshotId"]
    assert snapshot_id and new.replaces == f"{old.volume_id} {snapshot_id}"
    assert described(ec2_client, tag=volumes.RETIRED_TAG)["VolumeId"] == old.volume_id  # kept for now
    table = volumes.table(volumes.list_volumes(ec2_client), {})
    assert "retired by volume-move" in table and "moved copy" in table

    record = launch(cfg, "a", wait_ssh=False)
    assert zone_of(ec2_client, record.instance_id) == "us-east-1d"
    assert f"the old {old.volume_id} is deleted" in capsys.readouterr().out
    assert not ec2_client.describe_volumes(Filters=[{"Name": "volume-id", "Values": [old.volume_id]}])[
        "Volumes"
    ]
    snapshots = ec2_client.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert snapshot_id not in [s["SnapshotId"] for s in snapshots]
    tags = {t["Key"] for t in described(ec2_client)["Tags"]}
    assert volumes.REPLACES_TAG not in tags


def test_volume_move_refuses_bad_zones_and_attached_volumes(home, ec2_client, dlami):
    cfg = config(*WS)
    volumes.create_volume(ec2_client, cfg, "ws", "us-east-1a", "arn:aws:iam::1:user/t")
    with pytest.raises(ConfigError, match="already in us-east-1a"):
        volumes.move(ec2_client, cfg, "ws", "us-east-1", "us-east-1a", "o")
    with pytest.raises(ConfigError, match="zone 'eu-west-1a' is not in us-east-1"):
        volumes.move(ec2_client, cfg, "ws", "us-east-1", "eu-west-1a", "o")
    with pytest.raises(ToolkitError, match="no spotrun volume named 'nope' in us-east-1"):
        volumes.move(ec2_client, cfg, "nope", "us-east-1", "us-east-1b", "o")


def test_volume_resize_grows_only(home, ec2_client, dlami):
    volumes.create_volume(ec2_client, config(*WS), "ws", "us-east-1a", "o")
    with pytest.raises(ConfigError, match="cannot shrink"):
        volumes.resize(ec2_client, "ws", "us-east-1", 20)
    vol, old = volumes.resize(ec2_client, "ws", "us-east-1", 80)
    assert (old, vol.size_gb) == (50, 80) and described(ec2_client)["Size"] == 80
