"""The dataset cache's tests share this: the bucket, an upload of a synthetic dataset laid out as
`fab data-push` lays it out, a train config that reads it through the cache, a fast poll."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import boto3

from tests.peers.trainkit import data_cfg

BUCKET = "spotrun-data"
make_cfg = partial(data_cfg, steps=4, batch_size=8)


def upload(moto_url: str, folder: Path, prefix: str = "ds") -> None:
    """Every HDF5 file under folder into BUCKET under prefix, as `fab data-push` lays them out."""
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(folder.rglob("*.hdf5")):
        s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder)}")


def wait_until(check, timeout: float = 60.0):
    """check()'s first truthy value, polled every 20 ms (a fast poll: cache races are short)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {check}")


def s3_cfg(tmp_path: Path, **ds):
    """A train config reading BUCKET/ds through a cache under tmp_path."""
    ds.setdefault("cache_dir", str(tmp_path / "data-cache"))
    return make_cfg(f"s3://{BUCKET}/ds", tmp_path / "index", **ds)
