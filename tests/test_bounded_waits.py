"""Every wait on an external peer is bounded and says what it waited for (issue 22, class 2).

Each peer is played by a listener that accepts the connection and never answers (tests/peers/
silent.py), the worst case: nothing is refused, so only a timeout ends the wait. For each one the
test asserts one line naming the endpoint, within the bound, and (for a command) a non-zero exit.
The bounds are settings (SPOTRUN_AWS_TIMEOUT_S, SPOTRUN_SSH_WAIT_S, the Imds timeout) so these
tests wait seconds; the production defaults are checked to stay within 30 s.
"""

from __future__ import annotations

import os
import time

import pytest

from common import aws

AWS_BOUND_S = 1.5
# The tries' backoff (standard mode: under 1 + 2 s) and the imports of a first call (torch, on a
# loaded 2-core machine) come on top.
SLACK_S = 7.0


@pytest.fixture
def silent_aws(silent, monkeypatch, tmp_path):
    """Every AWS endpoint is the silent listener; one AWS call may wait AWS_BOUND_S in all."""
    host, port = silent
    url = f"http://{host}:{port}"
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SPOTRUN_AWS_TIMEOUT_S", str(AWS_BOUND_S))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / ".spotrun"))
    aws.reset_clients()
    yield url
    aws.reset_clients()


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_the_production_bounds_fit_in_30_seconds(monkeypatch):
    monkeypatch.delenv(aws.TIMEOUT_ENV, raising=False)
    config = aws.botocore_config()
    tries = config.retries["total_max_attempts"]
    # connect + read of every try, and the standard mode's backoff (under 1 s, then 2 s).
    assert tries * aws.per_try_timeout() + (1 + 2) <= 30
    assert config.read_timeout == config.connect_timeout == aws.per_try_timeout() <= 10
    from ec2.remote import ssh

    monkeypatch.delenv(ssh.WAIT_ENV, raising=False)
    assert ssh.wait_budget() == 30 and ssh.connect_timeout_s() == 10
    assert "ServerAliveInterval=15" in ssh.ssh_options(ssh.MachineRecord("m", "h", key_path="k"))
    from ec2.remote.imds import TIMEOUT_S

    assert TIMEOUT_S <= 5


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon", "1e9"])
def test_a_bad_bound_setting_is_one_line(monkeypatch, value):
    monkeypatch.setenv(aws.TIMEOUT_ENV, value)
    with pytest.raises(aws.ConfigError, match=rf"^{aws.TIMEOUT_ENV}='{value}': must be seconds"):
        aws.botocore_config()


# ---- the AWS API -----------------------------------------------------------------------------------


def test_fab_status_against_a_silent_aws_endpoint_is_one_line_in_bounded_time(
    silent_aws, tmp_path, monkeypatch
):
    from tests.peers.fab_process import run_fab

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "aws.yaml").write_text("ssh_cidr: 203.0.113.7/32\n")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    code, output = run_fab(["status"])
    took = time.monotonic() - start
    line = one_error_line(output)
    assert code == 1 and took < AWS_BOUND_S + SLACK_S, (code, took, output)
    assert f"no answer from {silent_aws} within {AWS_BOUND_S:g} s (3 tries)" in line
    assert "set by AWS_ENDPOINT_URL" in line and "credentials" not in line


def test_doctor_names_a_silent_endpoint_not_the_credentials(silent_aws, tmp_path, monkeypatch, capsys):
    from ec2.doctor import identity

    class Cfg:
        region, profile = "us-east-1", None

    class Ctx:
        cfg, region, caller = Cfg(), None, None

    checks = identity(Ctx())
    failed = checks[-1]
    assert failed.name == "AWS endpoint" and failed.status != "ok"
    assert f"no answer from {silent_aws} " in failed.detail and "aws configure" not in failed.fix


# ---- S3: the data path (boto3 and s3fs) and the checkpoint store ------------------------------------


def test_training_from_a_silent_s3_is_one_line_naming_the_endpoint(silent_aws, tmp_path):
    from ml.train import main
    from tests.peers.fab_process import in_process
    from tests.peers.trainkit import DEMO

    argv = [
        "--config",
        str(DEMO),
        "dataset.dataset_dir=s3://spotrun-data/brain",
        f"output_dir={tmp_path}/run",
        f"checkpoint_dir={tmp_path}/run/checkpoint",
    ]
    start = time.monotonic()
    code, output = in_process(lambda: main(argv))
    took = time.monotonic() - start
    line = one_error_line(output)
    assert code == 3 and took < AWS_BOUND_S + SLACK_S, (code, took, output)
    assert f"no answer from {silent_aws} " in line


def test_s3fs_reads_are_bounded_too(silent_aws):
    """The index build reads through h5py over s3fs: its own retry loop must not multiply the wait."""
    from ml.data.storage import FileRef, open_h5, s3_error
    from ml.errors import DataError

    ref = FileRef("s3://spotrun-data/brain/t15.2023.08.11/data_train.hdf5", 1 << 20, "etag")
    start = time.monotonic()
    with pytest.raises((DataError, *aws.S3_FAILURES)) as e:
        with open_h5(ref):
            pass
    took = time.monotonic() - start
    message = str(e.value) if isinstance(e.value, DataError) else str(s3_error(e.value, ref.uri))
    assert took < AWS_BOUND_S + SLACK_S, took
    assert silent_aws in message and "\n" not in message


def test_checkpoint_store_on_a_silent_s3_is_one_line(silent_aws, tmp_path):
    from ml.ckpt_store import CheckpointStore
    from ml.errors import CheckpointError

    store = CheckpointStore("s3://spotrun-ckpt/run1", tmp_path / "staging")
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        store.check()
    took = time.monotonic() - start
    assert took < AWS_BOUND_S + SLACK_S, took
    assert str(e.value).startswith("checkpoint_dir s3://spotrun-ckpt/run1: ")
    assert f"no answer from {silent_aws} " in str(e.value) and "\n" not in str(e.value)


# ---- SSH --------------------------------------------------------------------------------------------


def test_a_silent_ssh_port_is_one_line_in_bounded_time(silent, tmp_path, monkeypatch):
    from ec2 import registry
    from tests.peers.fab_process import run_fab

    host, port = silent
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / ".spotrun"))
    monkeypatch.setenv("SPOTRUN_SSH_WAIT_S", "3")
    monkeypatch.setenv("SPOTRUN_SSH_BACKOFF_S", "0.5")
    monkeypatch.delenv("SPOTRUN_SSH_ATTEMPTS", raising=False)
    key = tmp_path / "id_ed25519"
    key.write_text("not used: the banner never comes\n")
    key.chmod(0o600)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "aws.yaml").write_text("ssh_cidr: 203.0.113.7/32\n")
    monkeypatch.chdir(tmp_path)
    registry.put(registry.MachineRecord(name="quiet", host=host, port=port, key_path=str(key)))
    start = time.monotonic()
    code, output = run_fab(["run-cmd", "--name", "quiet", "--cmd", "true"])
    took = time.monotonic() - start
    line = one_error_line(output)
    # ConnectTimeout 1 s per attempt, and no attempt that would end past the 3 s budget.
    assert code == 1 and took < 3 + SLACK_S, (code, took, output)
    assert f"cannot reach quiet (ubuntu@{host}:{port})" in line and "timed out" in line


# ---- instance metadata ------------------------------------------------------------------------------


def test_a_silent_metadata_service_is_named_within_its_timeout(silent):
    from ec2.remote.imds import Imds, ImdsUnreachable

    host, port = silent
    start = time.monotonic()
    with pytest.raises(ImdsUnreachable) as e:
        Imds(f"http://{host}:{port}", timeout=0.5).instance_action()
    assert time.monotonic() - start < 2
    assert str(e.value).startswith(f"http://{host}:{port}: ") and "timed out" in str(e.value)


def test_the_spot_watcher_with_a_silent_metadata_service_says_so_once_and_runs_on(silent, tmp_path):
    from tests.peers.spot_watcher import watcher

    host, port = silent
    start = time.monotonic()
    proc = watcher(tmp_path, f"http://{host}:{port}", steps=5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.count("instance metadata not reachable") == 1, err
    assert f"http://{host}:{port}: timed out" in err and "step 4" in out
    assert time.monotonic() - start < 30


def test_rsync_to_a_silent_ssh_port_stops_at_the_wait_budget(silent, tmp_path, monkeypatch):
    """rsync retries a dropped transfer, but attempts that never got through share one budget."""
    from ec2.errors import ConnectionLost
    from ec2.registry import MachineRecord
    from ec2.remote.ssh import Machine, rsync_rsh
    from ec2.remote.sync import rsync_with_retries

    host, port = silent
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / ".spotrun"))
    monkeypatch.setenv("SPOTRUN_SSH_WAIT_S", "3")
    (tmp_path / "src").mkdir()
    record = MachineRecord(name="quiet", host=host, port=port, key_path=str(tmp_path / "key"))
    machine = Machine(record, attempts=6, backoff_s=0.2)
    argv = ["rsync", "-a", "-e", rsync_rsh(record), f"{tmp_path / 'src'}/", f"{host}:/tmp/nowhere/"]
    start = time.monotonic()
    with pytest.raises(ConnectionLost) as e:
        rsync_with_retries(machine, argv, "sync")
    took = time.monotonic() - start
    assert took < 3 + SLACK_S, took
    assert f"cannot reach quiet (ubuntu@{host}:{port}) for sync" in str(e.value) and "timed out" in str(
        e.value
    )
