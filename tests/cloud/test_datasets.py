"""`fab data-push` and `fab data-ls` against moto's server (behind the counting proxy where requests
are counted): skip on a second push, the multipart ETag computed locally, layout and bucket
errors in one line with nothing uploaded, Ctrl-C leaves no half object and the next push resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from common import aws, s3parts
from ec2.cloud import datasets
from ml.data import storage
from ml.data.index import build_index
from ml.data.loader import open_source
from tests.peers.fab_process import DEFAULT_SIGINT
from tests.peers.trainkit import data_cfg

REPO = Path(__file__).resolve().parents[2]
BUCKET = "spotrun-data"


@pytest.fixture
def s3(aws_env):
    aws.reset_clients()
    storage.reset_clients()
    client = boto3.client("s3", endpoint_url=aws_env)
    client.create_bucket(Bucket=BUCKET)
    yield client
    aws.reset_clients()
    storage.reset_clients()


def pushing_client():
    return aws.client("s3")


def keys(s3, prefix="ds/") -> dict[str, int]:
    out = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["Size"] for o in out}


def test_push_uploads_verifies_and_a_second_push_uploads_nothing(synthetic_data, s3, s3_proxy, tmp_path):
    first = datasets.push(pushing_client(), synthetic_data, f"s3://{BUCKET}/ds", say=lambda _: None)
    files = sorted(synthetic_data.rglob("*.hdf5"))
    assert len(first.uploaded) == len(files) and not first.skipped
    assert first.total_bytes == first.uploaded_bytes == sum(p.stat().st_size for p in files)
    for p in files:
        key = f"ds/{p.relative_to(synthetic_data)}"
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentLength"] == p.stat().st_size
        assert head["ETag"].strip('"') == s3parts.local_etag(p)
    assert first.indexes_written == len(files)

    s3_proxy.reset()
    second = datasets.push(pushing_client(), synthetic_data, f"s3://{BUCKET}/ds", say=lambda _: None)
    assert not second.uploaded and len(second.skipped) == len(files) and second.indexes_written == 0
    assert s3_proxy.counts["PUT"] == 0 and s3_proxy.counts["POST"] == 0  # nothing sent at all
    assert second.line().startswith(f"uploaded 0 files (0.00 GB), skipped {len(files)} already there")


def test_stored_index_is_one_get_per_file_on_a_fresh_machine(synthetic_data, s3, s3_proxy, tmp_path):
    datasets.push(pushing_client(), synthetic_data, f"s3://{BUCKET}/ds", say=lambda _: None)
    s3_proxy.reset()
    src = open_source(data_cfg(f"s3://{BUCKET}/ds", tmp_path / "fresh-index"), say=lambda _: None)
    # One LIST, then one GET per file for its stored index: no HEAD, no HDF5 metadata walk.
    assert dict(s3_proxy.counts) == {"GET": 1 + len(src.refs)}
    for ref, index in zip(src.refs, src.indices, strict=True):
        local = synthetic_data / ref.uri.split("/ds/")[1]
        built = build_index(storage.FileRef(str(local), ref.size, ""))
        assert (index.offsets == built.offsets).all() and (index.seq_class_ids == built.seq_class_ids).all()
        assert index.uri == ref.uri


def test_multipart_etag_matches_s3(s3, tmp_path):
    """A file over one part: S3's multipart ETag (MD5 of the parts' MD5s, -N) computed locally, for
    our part size and for the 8 MiB parts other tools use."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(s3parts.PART_SIZE + 3 * s3parts.MiB))
    s3.upload_file(str(big), BUCKET, "ours", Config=s3parts.transfer_config())
    s3.upload_file(str(big), BUCKET, "cli", Config=s3parts.transfer_config(s3parts.DEFAULT_TOOL_PART))
    ours = s3.head_object(Bucket=BUCKET, Key="ours")["ETag"].strip('"')
    cli = s3.head_object(Bucket=BUCKET, Key="cli")["ETag"].strip('"')
    assert ours == s3parts.local_etag(big) and ours.endswith("-2")
    assert cli.endswith("-3") and s3parts.matches_etag(big, cli, big.stat().st_size) is True
    big.write_bytes(big.read_bytes()[:-1] + b"x")
    assert s3parts.matches_etag(big, ours, big.stat().st_size) is False
    assert s3parts.matches_etag(big, "not-an-md5", big.stat().st_size) is None


def layout(tmp_path: Path, synthetic_data: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(synthetic_data, folder)
    return folder


@pytest.mark.parametrize(
    "breakage, message",
    [
        (
            lambda f: (f / "t15.2023.08.13" / "data_train.hdf5").unlink(),
            r"t15\.2023\.08\.13: no data_train\.hdf5",
        ),
        (
            lambda f: (f / "t15.2023.08.13" / "train.hdf5").write_bytes(b"x"),
            r"train\.hdf5: not a dataset file name",
        ),
        (lambda f: (f / "t15.2023.08.13" / "data_val.hdf5").write_bytes(b"junk"), r"data_val\.hdf5: not a "),
        (lambda f: (f / "loose.hdf5").write_bytes(b"x"), r"holds loose\.hdf5 directly"),
    ],
)
def test_bad_layout_is_one_line_and_nothing_is_uploaded(synthetic_data, s3, tmp_path, breakage, message):
    folder = layout(tmp_path, synthetic_data)
    breakage(folder)
    with pytest.raises(datasets.DatasetError, match=message) as err:
        datasets.push(pushing_client(), folder, f"s3://{BUCKET}/ds", say=lambda _: None)
    assert "\n" not in str(err.value) and keys(s3) == {}


def fab(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "fab"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ctrl_c_leaves_no_half_object_and_the_next_push_resumes(
    synthetic_data, s3, aws_env, s3_proxy, tmp_path
):
    folder = layout(tmp_path, synthetic_data)
    # One file over two parts, so the interrupt lands inside a multipart upload.
    big = folder / "t15.2023.08.20" / "data_train.hdf5"
    with open(big, "ab") as f:
        f.write(os.urandom(2 * s3parts.PART_SIZE))
    s3_proxy.latency_s = 0.3
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": s3_proxy.url}
    # A shell's background job starts with SIGINT ignored, and Python keeps it so: restore the default.
    cmd = [
        sys.executable,
        *DEFAULT_SIGINT,
        str(REPO / ".venv" / "bin" / "fab"),
        "data-push",
        "--src",
        str(folder),
        "--dest",
        f"s3://{BUCKET}/ds",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
        time.sleep(0.05)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "the big file's upload never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # aborted: no parts left behind
    there = keys(s3)
    assert "ds/t15.2023.08.20/data_train.hdf5" not in there
    for key, size in there.items():  # whatever is there is whole
        if key.endswith(".hdf5"):
            assert size == (folder / key[len("ds/") :]).stat().st_size

    s3_proxy.latency_s = 0.0
    result = datasets.push(pushing_client(), folder, f"s3://{BUCKET}/ds", say=lambda _: None)
    assert len(result.skipped) == len([k for k in there if k.endswith(".hdf5")]) > 0
    assert "ds/t15.2023.08.20/data_train.hdf5" in result.uploaded
    assert len(result.uploaded) + len(result.skipped) == len(list(folder.rglob("*.hdf5")))


def test_data_ls_shows_sessions_sizes_and_what_is_missing(synthetic_data, s3, tmp_path, capsys):
    folder = layout(tmp_path, synthetic_data)
    datasets.push(pushing_client(), folder, f"s3://{BUCKET}/ds", say=lambda _: None)
    # A file added by another tool: no stored index for it.
    s3.put_object(Bucket=BUCKET, Key="ds/t15.2023.08.25/data_val.hdf5", Body=b"x" * 1000)
    lines = datasets.listing_lines(
        f"s3://{BUCKET}/ds", datasets.listing(pushing_client(), f"s3://{BUCKET}/ds")
    )
    text = "\n".join(lines)
    assert lines[0] == f"s3://{BUCKET}/ds: 5 sessions"
    size = (folder / "t15.2023.08.13" / "data_train.hdf5").stat().st_size / 1e6
    assert f"t15.2023.08.13   train {size:7.1f} MB" in text
    assert "t15.2023.08.11" in text and "missing data_val.hdf5, data_test.hdf5" in text
    assert "missing data_train.hdf5, data_test.hdf5; no stored index for data_val.hdf5" in text
    assert lines[-1] == "1 sessions have no data_train.hdf5: training on them will fail"


def test_fab_data_ls_and_a_missing_bucket(synthetic_data, s3, aws_env):
    """Through `fab` itself: data-ls prints the listing; a push to a missing bucket is one line
    with the fix and a non-zero exit."""
    datasets.push(pushing_client(), synthetic_data, f"s3://{BUCKET}/ds", say=lambda _: None)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = fab("data-ls", f"s3://{BUCKET}/ds", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"s3://{BUCKET}/ds: 4 sessions") and "total " in done.stdout
    done = fab("data-push", "--src", str(synthetic_data), "--dest", "s3://no-such-bucket/ds", env=env)
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "error: s3://no-such-bucket: S3 NoSuchBucket; create it (aws s3 mb s3://no-such-bucket "
        "--region <your region>) or fix --dest"
    )
