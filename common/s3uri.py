"""``s3://bucket/prefix`` URIs, parsed in one place for the data path, the checkpoint store and
the notice watcher."""

from __future__ import annotations

SCHEME = "s3://"


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → (``bucket``, ``a/b``): the prefix without surrounding slashes."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    return bucket, prefix.strip("/")
