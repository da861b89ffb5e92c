"""The lifecycle building blocks: key file, ssh config, SSH CIDR, AMI resolver, plan, cost."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber

from ec2 import registry
from ec2.cloud import keys, network, pricing
from ec2.cloud.ami import resolve_ami, ssm_parameter
from ec2.cloud.capacity import plan
from ec2.errors import ConfigError, KeyPairError
from ec2.remote import ready, sshconfig
from tests.peers.moto_ec2 import DLAMI_NAME, config, make_image
from tests.peers.sshd import require_binaries


def test_key_pair_file_mode_and_no_overwrite(home, ec2_client):
    path = keys.ensure_key_pair(ec2_client, "k1", "arn:test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o400 and path == home / ".ssh" / "k1.pem"
    before = path.read_text()
    assert keys.ensure_key_pair(ec2_client, "k1", "arn:test") == path and path.read_text() == before
    # AWS has the pair, the file is gone: nothing can recover it; say what to do.
    path.unlink()
    with pytest.raises(KeyPairError, match="private key .* is missing; restore the file"):
        keys.ensure_key_pair(ec2_client, "k1", "arn:test")
    # A local file without a pair is never overwritten.
    (home / ".ssh" / "k2.pem").write_text("mine\n")
    with pytest.raises(KeyPairError, match="will not be overwritten"):
        keys.ensure_key_pair(ec2_client, "k2", "arn:test")
    assert (home / ".ssh" / "k2.pem").read_text() == "mine\n"
    with pytest.raises(KeyPairError, match="already exists"):
        keys.write_private_key(home / ".ssh" / "k2.pem", "other")


def test_ssh_cidr_is_the_callers_address_and_open_needs_the_flag(checkip, capsys):
    assert network.ssh_cidr(config("ssh_cidr=auto")) == f"{checkip}/32"
    with pytest.raises(ConfigError, match="whole internet.*allow_open_ssh"):
        network.ssh_cidr(config("ssh_cidr=0.0.0.0/0"))
    assert network.ssh_cidr(config("ssh_cidr=0.0.0.0/0", "allow_open_ssh=true")) == "0.0.0.0/0"
    assert "warning: SSH (port 22) will be open to 0.0.0.0/0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a CIDR"):
        network.ssh_cidr(config("ssh_cidr=my-laptop"))


def test_ssh_config_written_and_removed(home):
    user_config = home / ".ssh" / "config"
    user_config.parent.mkdir()
    user_config.write_text("Host lab\n    HostName lab.example\n")
    rec = registry.MachineRecord(
        name="exp1",
        host="198.51.100.5",
        user="ubuntu",
        key_path="/k/spot run.pem",
        instance_id="i-1",
        proxy_command="nc 127.0.0.1 %p",
    )
    sshconfig.write_entry(rec)
    sshconfig.write_entry(registry.MachineRecord(name="exp2", host="198.51.100.6", key_path="/k/a.pem"))
    sshconfig.write_entry(rec)  # idempotent: replaced, not duplicated
    text = user_config.read_text()
    assert text.startswith("Include config.d/spotrun\n") and text.count("Include") == 1 and "Host lab" in text
    managed = (home / ".ssh" / "config.d" / "spotrun").read_text()
    assert (
        managed.count("Host spotrun-exp1\n") == 1
        and stat.S_IMODE((home / ".ssh/config.d/spotrun").stat().st_mode) == 0o600
    )
    block = sshconfig.entries()["spotrun-exp1"]
    for line in (
        "HostName 198.51.100.5",
        "User ubuntu",
        "Port 22",
        'IdentityFile "/k/spot run.pem"',
        "IdentitiesOnly yes",
        f"UserKnownHostsFile {rec.known_hosts}",
        "StrictHostKeyChecking accept-new",
        "ProxyCommand nc 127.0.0.1 %p",
    ):
        assert f"    {line}\n" in block
    assert sshconfig.remove_entry("exp1") and not sshconfig.remove_entry("exp1")
    assert list(sshconfig.entries()) == ["spotrun-exp2"]


def test_ami_ssm_path_with_a_stubbed_client(ec2_client):
    image_id = make_image(ec2_client, DLAMI_NAME)
    ssm = boto3.client("ssm", region_name="us-east-1")
    cfg = config("ami_flavour=oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04")
    with Stubber(ssm) as stub:
        stub.add_response(
            "get_parameter",
            {"Parameter": {"Value": image_id}},
            {"Name": ssm_parameter("x86_64", cfg.ami_flavour)},
        )
        ami = resolve_ami(cfg, ec2_client, ssm)
    assert (ami.image_id, ami.name, ami.root_device) == (image_id, DLAMI_NAME, "/dev/sda1")
    assert ami.reason == f"latest via SSM {ssm_parameter('x86_64', cfg.ami_flavour)}"


def test_ami_describe_images_fallback_picks_the_flavour(ec2_client):
    make_image(ec2_client, DLAMI_NAME.replace("2.7", "2.6"))
    wanted = make_image(ec2_client, DLAMI_NAME)
    make_image(ec2_client, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250601")
    # moto has no /aws/service parameters: the real SSM call fails and the fallback answers.
    pinned = config("ami_flavour=oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04")
    ami = resolve_ami(pinned, ec2_client, boto3.client("ssm", region_name="us-east-1"))
    assert ami.image_id == wanted and "newest matching image by describe_images" in ami.reason
    assert "ParameterNotFound" in ami.reason
    fixed = resolve_ami(config(f"ami={wanted}"), ec2_client, None)
    assert fixed.reason == "set in config"


def test_plan_orders_by_spot_price_then_type_order():
    offered = {"g5.xlarge": ["a", "b"], "g4dn.xlarge": ["a", "b"]}
    prices = {("g5.xlarge", "a"): 0.30, ("g5.xlarge", "b"): 0.50, ("g4dn.xlarge", "a"): 0.30}
    on_demand = {"g5.xlarge": 1.0, "g4dn.xlarge": 0.5}
    spot = plan(["g5.xlarge", "g4dn.xlarge"], offered, prices, on_demand, "spot")
    # Tie at 0.30 keeps the configured type order; the pair with no price goes last.
    assert [(c.instance_type, c.zone) for c in spot] == [
        ("g5.xlarge", "a"),
        ("g4dn.xlarge", "a"),
        ("g5.xlarge", "b"),
        ("g4dn.xlarge", "b"),
    ]
    both = plan(
        ["g5.xlarge", "g4dn.xlarge"],
        offered,
        prices,
        on_demand,
        "spot-then-on-demand",
        exclude={("g5.xlarge", "a")},
    )
    assert [c.market for c in both] == ["spot"] * 3 + ["on-demand"] * 3
    assert ("g5.xlarge", "a") not in {(c.instance_type, c.zone) for c in both}


def test_cost_over_a_seeded_price_history():
    t0 = datetime(2025, 6, 1, 0, 0, tzinfo=UTC)
    points = [
        (t0 - timedelta(hours=1), 0.20),
        (t0 + timedelta(hours=1), 0.50),
        (t0 + timedelta(hours=2), 0.10),
    ]
    # 1 h at 0.20 (the price in effect at the start), 1 h at 0.50, 30 min at 0.10.
    assert pricing.cost_over(points, t0, t0 + timedelta(hours=2, minutes=30)) == pytest.approx(0.75)
    assert pricing.cost_over(points, t0 + timedelta(hours=3), t0 + timedelta(hours=4)) == pytest.approx(0.10)
    assert pricing.cost_over(points, t0, t0) == 0.0 and pricing.cost_over([], t0, t0) is None
    assert pricing.price_at(points, t0 + timedelta(minutes=90)) == 0.50


def test_proxy_command_tokens():
    assert ready.expand_proxy_command("ssh -W %h:%p bastion -l %r 100%%", "10.0.0.5", 22, "ubuntu") == (
        "ssh -W 10.0.0.5:22 bastion -l ubuntu 100%"
    )


def test_readiness_probe_reads_the_banner(sshd):
    require_binaries("nc")
    direct = registry.MachineRecord(name="p", host=sshd.host, port=sshd.port)
    proxied = registry.MachineRecord(
        name="p", host="203.0.113.9", port=sshd.port, proxy_command="nc 127.0.0.1 %p"
    )
    assert ready.probe(direct) and ready.probe(proxied)
    closed = registry.MachineRecord(name="p", host="127.0.0.1", port=1)
    assert not ready.probe(closed) and not ready.probe(
        registry.MachineRecord(name="p", host="x", proxy_command="true")
    )
    lines = []
    assert ready.wait_ssh(proxied, 5, out=lines.append) < 5 and lines[-1].startswith("SSH ready on p")


def test_aws_errors_tolerates_only_the_named_codes():
    from botocore.exceptions import ClientError

    from common.aws import aws_errors
    from ec2.errors import AwsError

    def refuse(code):
        raise ClientError({"Error": {"Code": code, "Message": "no."}}, "DeleteSecurityGroup")

    with aws_errors("deleting sg-1", tolerate={"DependencyViolation"}) as refused:
        refuse("DependencyViolation")
    assert refused.code == "DependencyViolation"
    with aws_errors("deleting sg-1", tolerate={"DependencyViolation"}) as fine:
        pass
    assert fine.code is None
    with pytest.raises(AwsError, match=r"^deleting sg-1: no; check your AWS credentials.*\[AuthFailure\]$"):
        with aws_errors("deleting sg-1", tolerate={"DependencyViolation"}):
            refuse("AuthFailure")


def test_a_forked_child_makes_its_own_aws_clients(aws_env):
    """DataLoader workers fork: the parent's client (and its sockets) must not cross."""
    import os

    from common import aws

    aws.reset_clients()
    parent = aws.client("s3")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports whether it got a fresh client, then leaves at once
        os.write(write, b"fresh" if aws.client("s3") is not parent else b"shared")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"fresh"
    assert aws.client("s3") is parent
