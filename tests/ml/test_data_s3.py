"""The data path over S3, through moto's server behind the counting proxy: the same batches as
local, one ranged GET per trial, the cached index, the chunked/compressed fallback, ETag keying,
forked DataLoader workers, and S3's errors."""

from __future__ import annotations

import json
import urllib.request
from functools import partial
from pathlib import Path

import boto3
import h5py
import pytest

from ml.data import build_train_loader, build_val_loader, storage
from ml.data.synthetic import reference_sessions
from ml.errors import DataError
from tests.peers.trainkit import data_cfg, distinct_reads, same_batch

SESSIONS = reference_sessions()[:4]
BUCKET = "spotrun-data"


# Smaller batches than the local tests: every GET goes through the proxy.
make_cfg = partial(data_cfg, steps=4, batch_size=8)


def upload(moto_url: str, folder: Path, prefix: str = "ds") -> boto3.client:
    """Upload straight to moto (not through the proxy, so the counts are the reader's only)."""
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(folder.rglob("*.hdf5")):
        s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder)}")
    return s3


@pytest.fixture(autouse=True)
def fresh_clients():
    """Each test has its own endpoint and credentials: drop the process's cached clients."""
    storage.reset_clients()
    yield
    storage.reset_clients()


def test_s3_equals_local_with_one_ranged_get_per_trial(synthetic_data, s3_proxy, aws_env, tmp_path):
    upload(aws_env, synthetic_data)
    cache = tmp_path / "cache"
    s3_cfg, local_cfg = make_cfg(f"s3://{BUCKET}/ds", cache), make_cfg(synthetic_data, tmp_path / "local")
    from_s3 = list(build_train_loader(s3_cfg))
    assert s3_proxy.counts["HEAD"] > 0  # the first run built the indices from the files
    local = list(build_train_loader(local_cfg))
    assert all(same_batch(a, b) for a, b in zip(from_s3, local, strict=True))
    val_pairs = zip(build_val_loader(s3_cfg), build_val_loader(local_cfg), strict=True)
    assert all(same_batch(a, b) for a, b in val_pairs)

    # Second run: indices from the local cache. One LIST, then exactly one ranged GET per trial
    # (a trial a batch draws twice is read once).
    n_trials, expected_bytes = distinct_reads(s3_cfg)
    s3_proxy.reset()
    loader = build_train_loader(s3_cfg)
    assert dict(s3_proxy.counts) == {"GET": 1} and s3_proxy.ranged_gets == 0
    again = list(loader)
    assert s3_proxy.ranged_gets == n_trials == s3_proxy.gets - 1
    list_bytes = s3_proxy.bytes_out - expected_bytes
    assert 0 < list_bytes < 10_000  # the rest is the LIST reply: no metadata reads
    assert all(same_batch(a, b) for a, b in zip(again, local, strict=True))


def rewrite_chunked(src: Path, dst: Path) -> None:
    with h5py.File(src) as fin, h5py.File(dst, "w") as fout:
        for name in fin:
            g = fout.create_group(name)
            for k, v in fin[name].attrs.items():
                g.attrs[k] = v
            for k in fin[name]:
                data = fin[name][k][()]
                if k == "input_features":
                    g.create_dataset(k, data=data, chunks=(16, 512), compression="gzip")
                else:
                    g.create_dataset(k, data=data)


def test_chunked_compressed_falls_back_to_h5py(synthetic_data, s3_proxy, aws_env, tmp_path):
    folder = tmp_path / "chunked"
    for s in SESSIONS:
        (folder / s).mkdir(parents=True)
        for f in (synthetic_data / s).glob("*.hdf5"):
            rewrite_chunked(f, folder / s / f.name)
    upload(aws_env, folder)
    cache = tmp_path / "cache"
    local = list(build_train_loader(make_cfg(synthetic_data, cache)))
    chunked_local = list(build_train_loader(make_cfg(folder, cache)))
    chunked_s3 = list(build_train_loader(make_cfg(f"s3://{BUCKET}/ds", cache)))
    assert all(same_batch(a, b) for a, b in zip(local, chunked_local, strict=True))
    assert all(same_batch(a, b) for a, b in zip(local, chunked_s3, strict=True))


def test_index_cache_keyed_by_etag(synthetic_data, s3_proxy, aws_env, tmp_path):
    s3 = upload(aws_env, synthetic_data)
    cfg = make_cfg(f"s3://{BUCKET}/ds", tmp_path / "cache", dataset_probability_val=[0, 0, 0, 1])
    val = [b["trial_nums"].tolist() for b in build_val_loader(cfg)]
    # Replace session 3's val file with one holding fewer trials: a new ETag, so a new index.
    src = synthetic_data / SESSIONS[3] / "data_val.hdf5"
    smaller = tmp_path / "data_val.hdf5"
    with h5py.File(src) as fin, h5py.File(smaller, "w") as fout:
        for name in sorted(fin)[:3]:
            fin.copy(fin[name], fout, name)
    s3.upload_file(str(smaller), BUCKET, f"ds/{SESSIONS[3]}/data_val.hdf5")
    s3_proxy.reset()
    rebuilt = [b["trial_nums"].tolist() for b in build_val_loader(cfg)]
    assert s3_proxy.counts["HEAD"] == 1  # only the changed file was opened again
    assert sum(map(len, val)) == 6 and sum(map(len, rebuilt)) == 3


def test_dataloader_workers_over_s3(synthetic_data, s3_proxy, aws_env, tmp_path):
    upload(aws_env, synthetic_data)
    cache = tmp_path / "cache"
    # The parent builds the indices (s3fs, h5py, boto3 all live in it) before the workers fork.
    plain = list(build_train_loader(make_cfg(f"s3://{BUCKET}/ds", cache, steps=6)))
    forked = list(build_train_loader(make_cfg(f"s3://{BUCKET}/ds", cache, steps=6, num_dataloader_workers=2)))
    assert len(forked) == 6 and all(same_batch(a, b) for a, b in zip(plain, forked, strict=True))


def test_no_such_bucket(aws_env, tmp_path):
    with pytest.raises(DataError, match=r"^s3://no-such-bucket/ds: S3 NoSuchBucket; check dataset"):
        build_val_loader(make_cfg("s3://no-such-bucket/ds", tmp_path))


def test_missing_session_prefix(synthetic_data, aws_env, tmp_path):
    upload(aws_env, synthetic_data / SESSIONS[0], prefix=f"ds/{SESSIONS[0]}")
    with pytest.raises(DataError, match=rf"s3://{BUCKET}/ds/{SESSIONS[1]}: session folder not found"):
        build_train_loader(make_cfg(f"s3://{BUCKET}/ds", tmp_path))


def _moto(aws_env: str, path: str, body: str) -> None:
    # text/plain: a form content type would hide the body from moto's request.data.
    req = urllib.request.Request(
        f"{aws_env}{path}", data=body.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(req)


@pytest.mark.parametrize("cached_index", [False, True])
def test_access_denied(synthetic_data, aws_env, tmp_path, monkeypatch, cached_index):
    """A user allowed to list the bucket but not to read objects: moto enforces IAM once its
    auth is switched on (POST /moto-api/reset-auth)."""
    upload(aws_env, synthetic_data)
    cfg = make_cfg(f"s3://{BUCKET}/ds", tmp_path / "cache")
    if cached_index:
        build_train_loader(cfg)  # indices cached: the failure comes from the ranged GET
    iam = boto3.client("iam", endpoint_url=aws_env)
    iam.create_user(UserName="reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"}],
    }
    iam.put_user_policy(UserName="reader", PolicyName="list-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    storage.reset_clients()
    _moto(aws_env, "/moto-api/reset-auth", "0")
    try:
        with pytest.raises(
            DataError,
            match=r"s3://spotrun-data/ds/t15\.2023\.08\.\d\d/data_\w+\.hdf5: "
            r"S3 AccessDenied; grant s3:GetObject",
        ) as err:
            loader = build_train_loader(cfg)
            next(iter(loader))
    finally:
        _moto(aws_env, "/moto-api/reset-auth", "inf")
    assert "\n" not in str(err.value)
