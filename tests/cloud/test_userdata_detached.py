"""A detached run's user data run for real, as cloud-init runs it on a new instance of the group: in
the sandbox of tests/peers/sandbox.py (a private mount namespace, stand-ins for `shutdown` and
`systemctl`), against moto's server (S3 holding the bundle and the record, the group of one) behind
the test proxy (which refuses what a test asks it to, with S3's AccessDenied document), and the
IMDS stand-in for the instance's identity.

Further stand-ins, for what only an instance has: `runuser` (runs the command as this user),
`systemd-run` (records its argv; where a test asks, runs the boot as the unit would, then exits 0
as systemd-run does once the unit started), `python3` (this repository's Python, which has boto3;
or, for the failed-install case, the same interpreter without site-packages: no boto3, no pip), and
`aws`, which records a call and answers "command not found": the boot must not need it.

Each failure before the run's record is read ends, within the one boot, with the group's desired
capacity 0 (read back from moto) and the cause on the group's tag, where `fab watch` and `fab
status` show it."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import boto3
import pytest

from common import aws
from ec2.cloud import asg, bundle
from ec2.cloud.userdata import build_detached_user_data
from ec2.errors import ToolkitError
from ec2.journey import detach
from ec2.journey.detached_groups import status_lines
from ec2.remote import detached
from ec2.remote.detached import DetachedRun
from ec2.remote.giveup import GIVEUP_TAG
from tests.peers.moto_ec2 import config
from tests.peers.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]
BUCKET = "spot-boot"
ROOT = f"s3://{BUCKET}/runs/job/checkpoint-spotrun-job"
GROUP = asg.group_name("job")

AWS = '#!/bin/bash\necho "aws $*" >> {log}\necho "aws: command not found" >&2\nexit 127\n'
RUNUSER = '#!/bin/bash\nshift 3\nexec "$@"\n'  # runuser -u USER -- CMD...
SYSTEMD_RUN = """#!/bin/bash
printf '%s\\n' "$@" > {state}/systemd-run.args
[ -f {state}/run-boot ] || exit 0
while [ $# -gt 0 ]; do
  case "$1" in
    --working-directory=*) cd "${{1#*=}}" ;;
    --setenv=*) export "${{1#--setenv=}}" ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
"$@"
exit 0
"""


class DetachedBox:
    def __init__(self, box: Sandbox, imds):
        self.box, self.imds = box, imds
        self.s3, self.asg = boto3.client("s3"), boto3.client("autoscaling")
        self.remote = box.root / "home" / "spotrun"
        self.bundle_uri = ""

    def python(self, *flags: str) -> None:
        """The `python3` on PATH: this repository's interpreter, with ``flags``."""
        self.script("python3", f'#!/bin/sh\nexec {sys.executable} {" ".join(flags)} "$@"\n')

    def script(self, name: str, text: str) -> None:
        path = self.box.root / "bin" / name
        path.write_text(text.format(log=self.box.log, state=self.box.state))
        path.chmod(0o755)

    def user_data(self) -> str:
        return build_detached_user_data(
            12,
            0,
            22,
            root=ROOT,
            bundle_uri=self.bundle_uri,
            remote_dir=str(self.remote),
            login_user="ubuntu",
            group=GROUP,
            region="us-east-1",
        )

    def boot(self):
        script = self.box.root / "user-data"
        script.write_text(self.user_data())
        return self.box.run("bash", str(script), timeout=120)

    def group(self) -> dict:
        return self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]

    def cause(self) -> str | None:
        return {t["Key"]: t["Value"] for t in self.group()["Tags"]}.get(GIVEUP_TAG)


@pytest.fixture
def machine(s3_proxy, imds, monkeypatch):
    """The group of one (desired 1, tagged as `fab run --detach` tags it), the run's record and its
    code bundle (ec2/ and common/, packed as bundle.build packs a folder) in S3, and the sandbox."""
    monkeypatch.setenv("SPOTRUN_IMDS_URL", imds.url)
    aws.reset_clients()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    boto3.client("ec2").create_launch_template(
        LaunchTemplateName=GROUP, LaunchTemplateData={"ImageId": "ami-12345678"}
    )
    tags = {"spotrun:name": "job", asg.ROOT_TAG: ROOT}
    boto3.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        LaunchTemplate={"LaunchTemplateName": GROUP, "Version": "$Latest"},
        MinSize=0,
        MaxSize=1,
        DesiredCapacity=1,
        AvailabilityZones=["us-east-1a"],
        Tags=[
            {
                "ResourceId": GROUP,
                "ResourceType": "auto-scaling-group",
                "Key": k,
                "Value": v,
                "PropagateAtLaunch": False,
            }
            for k, v in tags.items()
        ],
    )
    # Not under /tmp: the namespace's /tmp is the sandbox's own.
    root = Path(tempfile.mkdtemp(prefix="srdetach", dir="/var/tmp"))
    src = root / "src"
    for package in ("ec2", "common"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    made = bundle.build(src)
    m = DetachedBox(Sandbox(root), imds)
    m.bundle_uri, _ = bundle.upload(s3, ROOT, made)
    detached.save(s3, DetachedRun(name="job", group=GROUP, region="us-east-1", root=ROOT, command="true"))
    m.script("aws", AWS)
    m.script("runuser", RUNUSER)
    m.script("systemd-run", SYSTEMD_RUN)
    m.python()
    yield m
    aws.reset_clients()
    shutil.rmtree(root, ignore_errors=True)


def test_no_aws_binary_the_boot_fetches_the_bundle_with_boto3_and_starts(machine):
    proc = machine.boot()
    assert proc.returncode == 0, proc.stderr
    assert machine.box.calls("aws") == []  # never asked for
    assert (machine.remote / "code" / "ec2" / "remote" / "boot.py").is_file()
    args = (machine.box.state / "systemd-run.args").read_text().splitlines()
    assert args[-4:] == ["--root", ROOT, "--group", GROUP]
    assert machine.group()["DesiredCapacity"] == 1 and machine.cause() is None


def _install_fails(m: DetachedBox, proxy) -> None:
    m.python("-S")  # no site-packages: no boto3, and `python3 -m pip` has no pip


def _s3_refused(m: DetachedBox, proxy) -> None:
    proxy.fail_next(1, 403, "AccessDenied", "GET", "/bundle-")


def _corrupt_bundle(m: DetachedBox, proxy) -> None:
    bucket, key = detached.key_of(m.bundle_uri)
    m.s3.put_object(Bucket=bucket, Key=key, Body=b"not a gzip file at all")


def _record_refused(m: DetachedBox, proxy) -> None:
    (m.box.state / "run-boot").touch()  # systemd-run starts the real boot
    proxy.fail_next(1, 403, "AccessDenied", "GET", "/state.json")


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (_install_fails, ["installing boto3 for the boot failed", "No module named pip"]),
        (_s3_refused, ["fetching the code bundle", "AccessDenied"]),
        (_corrupt_bundle, ["does not unpack (corrupt?)", "gzip"]),
        (_record_refused, ["reading the run's record", "was refused (AccessDenied)"]),
    ],
    ids=["boto3-install-fails", "s3-refused", "corrupt-bundle", "record-access-denied"],
)
def test_a_boot_that_cannot_reach_the_record_stops_its_group_and_says_why(machine, s3_proxy, fault, said):
    fault(machine, s3_proxy)
    proc = machine.boot()
    out = proc.stdout + proc.stderr

    assert machine.group()["DesiredCapacity"] == 0, out  # read back from moto: no relaunch
    cause = machine.cause()
    assert cause is not None and machine.imds.instance_id in cause, out
    assert all(s in cause for s in said), cause
    assert any(c.startswith("shutdown -h now") for c in machine.box.calls("shutdown")), machine.box.calls()
    assert machine.box.calls("aws") == []

    # `fab watch` ends with the cause (one line, non-zero exit); `fab status` shows it too.
    cfg = config("region=us-east-1")
    with pytest.raises(ToolkitError) as e:
        detach.watch(detach.Detached(cfg, "job"), out=lambda line: None, poll_s=0.1)
    assert "gave up" in str(e.value) and said[0] in str(e.value)
    [line] = status_lines(cfg, "us-east-1")
    assert f"boot failed: {cause}" in line
