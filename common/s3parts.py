"""How spotrun moves whole files to and from S3: the part size, the transfer settings, and the
ETag S3 gives an object, computed locally.

Shared by `fab data-push` (upload, and skipping what is already there) and the trainer's dataset
cache (download, and checking a cached copy). One part size for both, so the ETag of a pushed file
can be computed on the laptop before the upload and checked on the instance after the download.

S3's ETag for an object written with a single PUT is the MD5 of its bytes; for a multipart upload
it is the MD5 of the concatenated binary MD5s of its parts, then ``-<number of parts>``. boto3's
transfer manager uses a multipart upload when the file is at least ``multipart_threshold`` bytes.
Objects encrypted with SSE-KMS (or SSE-C) have ETags that are not MD5s: those cannot be checked
locally, and callers fall back to the size.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

MiB = 1024 * 1024
# 16 MiB parts: the top of the 8-16 MiB range AWS recommends for ranged GETs, few enough parts for
# a 200 MB file (13) that the per-request cost stays small, many enough to download in parallel.
PART_SIZE = 16 * MiB
CONCURRENCY = 10
# The AWS CLI's and boto3's default part size: files uploaded by other tools often use it.
DEFAULT_TOOL_PART = 8 * MiB
_READ = 4 * MiB


def transfer_config(part_size: int = PART_SIZE, concurrency: int = CONCURRENCY):
    """boto3 TransferConfig: multipart from one part up, parallel parts of ``part_size``."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=concurrency,
        use_threads=True,
    )


def local_etag(path: str | Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 will give ``path`` uploaded by boto3 with ``transfer_config(part_size)``."""
    size = Path(path).stat().st_size
    if size < part_size:
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
        return h.hexdigest()
    digests = []
    with open(path, "rb") as f:
        while True:
            h = hashlib.md5(usedforsecurity=False)
            left = part_size
            while left:
                chunk = f.read(min(_READ, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            if left == part_size:
                break
            digests.append(h.digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def part_sizes_for(etag: str, size: int) -> list[int]:
    """Part sizes that could have produced ``etag`` for an object of ``size`` bytes, most likely
    first: ours, the tools' default, then the smallest whole MiB giving that many parts.
    Empty when the ETag is not an MD5 (SSE-KMS) or no such size exists."""
    etag = etag.strip('"')
    digest, _, parts = etag.partition("-")
    if len(digest) != 32 or not all(c in "0123456789abcdef" for c in digest.lower()):
        return []
    if not parts:
        # A single PUT: any part size above the object size gives a plain MD5.
        return [max(size + 1, PART_SIZE)]
    if not parts.isdigit() or int(parts) < 1:
        return []
    n = int(parts)
    fits = [p for p in (PART_SIZE, DEFAULT_TOOL_PART) if math.ceil(size / p) == n]
    smallest = math.ceil(math.ceil(size / n) / MiB) * MiB
    if smallest and math.ceil(size / smallest) == n and smallest not in fits:
        fits.append(smallest)
    return fits


def matches_etag(path: str | Path, etag: str, size: int) -> bool | None:
    """Whether the local file is the object with ``etag`` and ``size``: True or False, or None
    when the ETag cannot be computed locally (then only the size was compared)."""
    if Path(path).stat().st_size != size:
        return False
    candidates = part_sizes_for(etag, size)
    if not candidates:
        return None
    want = etag.strip('"')
    return any(local_etag(path, p) == want for p in candidates)
