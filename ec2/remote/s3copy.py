"""Copy a local folder to s3://bucket/prefix, sending only files S3 does not already hold with the
same size and ETag. Used by the notice watcher on the instance (boto3 only) to put a checkpoint
folder somewhere safe in the seconds before the instance is taken back.

ETags: a single-part upload's ETag is the MD5 of the body; a multipart one is the MD5 of the
parts' MD5s with "-<parts>" appended, so it can be recomputed when the part size is known (ours,
PART_SIZE, for files we uploaded).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from common.s3uri import split_s3

PART_SIZE = 64 * 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=8)


class CopyError(Exception):
    """S3 refused the copy (credentials, permissions, a missing bucket)."""


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → (`bucket`, `a/b/`); the prefix always ends with '/' (or is empty)."""
    bucket, prefix = split_s3(uri)
    return bucket, (prefix + "/" if prefix else "")


def local_etag(path: Path, parts: int = 1, part_size: int = PART_SIZE) -> str:
    """The ETag S3 would give this file uploaded in `parts` parts of `part_size` bytes."""
    if parts <= 1:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
        return md5.hexdigest()
    digests = b""
    with open(path, "rb") as f:
        while block := f.read(part_size):
            digests += hashlib.md5(block, usedforsecurity=False).digest()
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{parts}"


def same_object(path: Path, size: int, etag: str) -> bool:
    if path.stat().st_size != size:
        return False
    etag = etag.strip('"')
    parts = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
    return local_etag(path, parts) == etag


def _is_partial(name: str) -> bool:
    # A file still being written by an atomic writer (".name.XXXX.tmp") or an rsync partial.
    return name.endswith((".tmp", ".partial")) or name.startswith(".")


def local_files(folder: Path) -> list[Path]:
    """Complete files, newest first: the checkpoint just written on the notice goes up first."""
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(_is_partial(part) for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: (-p.stat().st_mtime, str(p)))


@dataclass
class CopyStats:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    seconds: float = 0.0


def remote_objects(s3, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """key → (size, etag) under the prefix."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["Size"], obj["ETag"])
    return out


def copy_folder(s3, folder: str | os.PathLike, uri: str) -> CopyStats:
    """Upload every complete file under `folder` to `uri` that S3 lacks or holds differently."""
    start = time.monotonic()
    folder = Path(folder)
    bucket, prefix = split_uri(uri)
    stats = CopyStats()
    try:
        existing = remote_objects(s3, bucket, prefix)
        for path in local_files(folder):
            key = prefix + path.relative_to(folder).as_posix()
            if key in existing and same_object(path, *existing[key]):
                stats.skipped.append(key)
                continue
            size = path.stat().st_size
            s3.upload_file(str(path), bucket, key, Config=TRANSFER)
            stats.uploaded.append(key)
            stats.bytes_uploaded += size
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        raise CopyError(f"copying {folder} to {uri} failed [{code}]: {e}") from None
    stats.seconds = time.monotonic() - start
    return stats
