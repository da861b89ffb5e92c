"""The fault battery: things that go wrong in the middle, each ending with 0 lost checkpoints and 0
leaked instances.

- sshd killed in the middle of an rsync (a sync, a download): the retry completes (a sync resumes
  the partial file; the laptop's old checkpoint stays whole until the new one has arrived);
- the laptop's `fab download` killed (SIGKILL, the whole process group) mid-transfer: the old
  local checkpoint is intact and the next download completes;
- S3 answering 503 SlowDown / 500 InternalError for a while (the counting proxy injects S3's
  documented error responses): retried with backoff, the run goes on and its checkpoints land;
- the instance terminated in moto during `fab sync` and during `fab setup`: one `error:` line and
  the registry and ssh config entries are gone.

Transfers go through a slow link (tests/peers/throttle.py as the ProxyCommand), so "in the
middle" is a state the test waits for (a partial file exists), not a race against a loopback copy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

from common import aws
from ec2 import registry
from ec2.cloud import instances
from ec2.remote import sshconfig
from ec2.remote.ssh import Machine
from ec2.remote.sync import sync_code
from tasks import lifecycle, remote
from tests.peers.moto_ec2 import DLAMI_NAME, make_image

REPO = Path(__file__).resolve().parents[2]
RATE = 1_000_000  # bytes per second through the slow link
BIG = 2_000_000  # a file that takes ~2 s through it


def wait_until(predicate, timeout_s: float = 60, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def partial_in(folder: Path, name: str) -> bool:
    """rsync is writing `name` in `folder`: its temporary `.name.XXXXXX` exists (or `name.XXXXXX`
    in a --temp-dir)."""
    return folder.is_dir() and any(p.name.startswith((f".{name}.", f"{name}.")) for p in folder.iterdir())


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "setup_instance.sh").write_text((REPO / "scripts" / "setup_instance.sh").read_text())
    (root / "requirements.lock").write_text("numpy==2.4.6\n")
    (root / "weights.bin").write_bytes(os.urandom(BIG))
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("SPOTRUN_SSH_ATTEMPTS", "6")
    monkeypatch.setenv("SPOTRUN_SSH_BACKOFF_S", "0.5")


class HeldLink:
    """A slow link to ``sshd`` that holds a transfer at half of a BIG file until ``cut()``: mid-file,
    however late a loaded box lets the test thread look (a 2 s transfer once ended before it did).
    ``cut()`` ends the link too: what sshd had already handed to the kernel would otherwise still
    cross it. The retry's new link then runs freely."""

    def __init__(self, sshd, folder: Path):
        self.hold = folder / "link-holds"
        self.hold.touch()
        self.command = sshd.throttled(RATE, hold=self.hold, hold_after=BIG // 2)

    def cut(self) -> None:
        subprocess.run(["pkill", "-f", self.command], check=False)
        self.hold.unlink()


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def body():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: B036 (handed to the test thread)
            result["error"] = e

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result


def test_sshd_killed_mid_rsync_the_retry_completes(sshd, project, quick_retries, capfd):
    link = HeldLink(sshd, project.parent)  # not in the project: the sync would send it
    record = sshd.record(name="box", proxy_command=link.command)
    code_dir = sshd.root / "remote" / "code"
    thread, result = in_thread(sync_code, Machine(record), project)
    wait_until(lambda: partial_in(code_dir, "weights.bin"), what="the sync to be mid-file")
    sshd.stop()  # the listener and every connection: the machine's sshd died mid-transfer
    link.cut()
    time.sleep(1)
    sshd.restart()
    thread.join(120)
    assert "error" not in result, result.get("error")
    assert (code_dir / "weights.bin").read_bytes() == (project / "weights.bin").read_bytes()
    assert "sync: connection lost" in capfd.readouterr().err  # it did retry
    # The partial file was kept between attempts, so the retry sent only the rest.
    assert result["value"].bytes_sent < BIG


def _remote_run_with_checkpoint(sshd) -> tuple[Path, bytes]:
    """A run's output folder on the machine holding a new, big last.pt, and its run folder."""
    remote_out = sshd.root / "remote" / "code" / "out"
    (remote_out / "checkpoint").mkdir(parents=True)
    new = os.urandom(BIG)
    (remote_out / "checkpoint" / "last.pt").write_bytes(new)
    (sshd.root / "remote" / "runs" / "train").mkdir(parents=True)
    (sshd.root / "remote" / "runs" / "train" / "log").write_text("step 90\n")
    return remote_out, new


OLD = b"step 40: the checkpoint the last download kept"


def _laptop_checkpoint(project: Path) -> Path:
    local = project / "outputs" / "box" / "checkpoint"
    local.mkdir(parents=True)
    (local / "last.pt").write_bytes(OLD)
    return local


def test_sshd_killed_mid_download_keeps_the_old_checkpoint_and_the_retry_completes(
    sshd, project, quick_retries, capfd
):
    remote_out, new = _remote_run_with_checkpoint(sshd)
    local = _laptop_checkpoint(project)
    link = HeldLink(sshd, project)
    sshd.record(name="box", proxy_command=link.command)
    thread, result = in_thread(remote.download, Context(), name="box", output_dir=str(remote_out))
    temp_dir = project / "outputs" / "box" / ".rsync-partial"
    wait_until(lambda: partial_in(temp_dir, "last.pt"), what="the download to be mid-file")
    sshd.stop()
    link.cut()
    assert (local / "last.pt").read_bytes() == OLD  # never a half-written checkpoint
    time.sleep(1)
    sshd.restart()
    thread.join(120)
    assert "error" not in result, result.get("error")
    assert (local / "last.pt").read_bytes() == new
    assert "download: connection lost" in capfd.readouterr().err


def test_fab_download_killed_keeps_the_old_checkpoint_and_the_next_download_completes(sshd, project):
    remote_out, new = _remote_run_with_checkpoint(sshd)
    local = _laptop_checkpoint(project)
    sshd.record(name="box", proxy_command=sshd.throttled(RATE))

    argv = [str(Path(sys.executable).parent / "fab"), "-r", str(REPO), "download", "--name", "box"]
    argv += ["--output-dir", str(remote_out)]
    proc = subprocess.Popen(argv, cwd=project, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        temp_dir = project / "outputs" / "box" / ".rsync-partial"
        wait_until(lambda: partial_in(temp_dir, "last.pt"), what="the download to be mid-file")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the laptop process and its rsync/ssh children
        proc.wait(10)
    assert (local / "last.pt").read_bytes() == OLD

    remote.download(Context(), name="box", output_dir=str(remote_out))
    assert (local / "last.pt").read_bytes() == new
    assert (project / "outputs" / "box" / "run" / "log").read_text() == "step 90\n"
    # What the killed rsync left is not mistaken for a file of the run.
    assert sorted(p.name for p in local.iterdir()) == ["last.pt"]


def test_s3_slowdown_and_500s_are_retried_and_the_run_goes_on(aws_env, s3_proxy, tmp_path, capsys):
    from ml import checkpoint
    from ml.data import storage
    from ml.train import main
    from tests.peers.trainkit import DEMO, make_data, tiny

    data = make_data(tmp_path / "data")
    s3 = boto3.client("s3", endpoint_url=aws_env)  # straight to moto: setup is not under test
    s3.create_bucket(Bucket="spotrun-faults")
    for path in sorted(data.rglob("*.hdf5")):
        s3.upload_file(str(path), "spotrun-faults", f"ds/{path.relative_to(data)}")
    aws.reset_clients()
    storage.reset_clients()
    try:
        # A struggling S3 for a while: every 3rd request fails, 4 SlowDowns then 2 InternalErrors.
        s3_proxy.inject(4, 503, "SlowDown", every=3)
        args = tiny(data, tmp_path / "run", 6, "dataset.dataset_dir=s3://spotrun-faults/ds")
        args.append("checkpoint_dir=s3://spotrun-faults/ckpt")
        done = []

        def then_500s():
            wait_until(lambda: s3_proxy.injected >= 4 or done, what="the SlowDowns to be served")
            s3_proxy.inject(2, 500, "InternalError", every=3)

        thread, _ = in_thread(then_500s)
        code = main(["--config", DEMO, *args])
        done.append(True)
        thread.join(30)
        out = capsys.readouterr()
        assert code == 0, out.err
        assert s3_proxy.injected == 6, "the faults were not all served while the run went on"
        local = tmp_path / "last.pt"
        s3.download_file("spotrun-faults", "ckpt/last.pt", str(local))
        assert checkpoint.load(local)["step"] == 6
    finally:
        aws.reset_clients()
        storage.reset_clients()


@pytest.fixture
def launched(sshd, aws_env, project, monkeypatch):
    """An instance launched in moto whose SSH is the sshd fixture through the slow link."""
    aws.reset_clients()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    make_image(ec2, DLAMI_NAME)
    sets = [
        "ssh_cidr=203.0.113.7/32",
        "ami_owners=[self]",
        "instance_types=[g5.xlarge]",
        "zones=[us-east-1a]",
        f"ssh_proxy_command={sshd.throttled(RATE)}",
        f"ssh_user={sshd.user}",
        f"remote_dir={sshd.root / 'remote'}",
        "ssh_ready_timeout_s=30",
    ]
    lifecycle.launch(Context(), name="exp1", set_=sets)
    sshd.authorize(registry.get("exp1").key_path)
    yield ec2, sets
    aws.reset_clients()


def _terminated_mid(task, ec2, sshd, ready, capfd) -> str:
    """Run `task` in a thread; when `ready()`, the machine goes away (its sshd stops at once) and
    AWS reports the instance ended (terminated in moto just after: either order must work)."""
    capfd.readouterr()
    (info,) = instances.find_instances(ec2, "exp1")
    thread, result = in_thread(task)
    wait_until(ready, what="the task to be mid-way")
    sshd.stop()
    ec2.terminate_instances(InstanceIds=[info.instance_id])
    thread.join(120)
    assert isinstance(result.get("error"), Exit), result
    assert result["error"].code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "exp1" not in registry.load_all() and "spotrun-exp1" not in sshconfig.entries(), err
    assert instances.find_instances(ec2, "exp1") == []  # nothing left running
    return lines[0]


def test_instance_terminated_during_fab_sync(launched, sshd, project, quick_retries, capfd):
    ec2, sets = launched
    code_dir = sshd.root / "remote" / "code"
    line = _terminated_mid(
        lambda: remote.sync(Context(), name="exp1", set_=sets),
        ec2,
        sshd,
        lambda: partial_in(code_dir, "weights.bin"),
        capfd,
    )
    assert line.startswith("error: exp1 (i-") and "fab launch --name exp1" in line, line


def test_instance_terminated_during_fab_setup(launched, sshd, project, quick_retries, capfd):
    ec2, sets = launched
    (project / "weights.bin").unlink()  # a quick sync, then the setup script runs
    venv = sshd.root / "remote" / "venv"
    line = _terminated_mid(
        lambda: remote.setup(
            Context(), name="exp1", python=str(REPO / ".venv/bin/python"), no_gpu=True, set_=sets
        ),
        ec2,
        sshd,
        venv.exists,
        capfd,
    )
    assert line.startswith("error: exp1 (i-") and "registry" in line, line
