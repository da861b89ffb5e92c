"""``s3://bucket/prefix`` URIs, parsed and checked in one place for every setting and command that
takes one (the data path, the checkpoint store, the notice watcher, `s3_access`, `fab data-*`).

A URI is checked against S3's own naming rules before any request is made, so a mistake is one
line saying which rule it breaks (botocore answers a bad name with a multi-line regular
expression, and S3 with advice to create a bucket it would itself refuse):
https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general purpose
buckets) and https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html (keys: up to
1,024 bytes of UTF-8). Buckets made before March 2018 in us-east-1 could break these rules
(capitals, underscores); spotrun does not accept those.
"""

from __future__ import annotations

import ipaddress
import re

from common.errors import ConfigError

SCHEME = "s3://"
MAX_KEY_BYTES = 1024
_BUCKET_CHARS = re.compile(r"[a-z0-9.-]+")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
EXAMPLE = "s3://my-bucket/data"


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEME)


def looks_like_s3(value: str) -> bool:
    """Meant as an S3 URI (``S3://``, ``s3:/``, ``s3:``): checked as one, never taken as a folder
    named ``s3:`` in the current directory."""
    return isinstance(value, str) and value.strip().lower().startswith("s3:")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → (``bucket``, ``a/b``): the prefix without surrounding slashes."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    return bucket, prefix.strip("/")


def bucket_problem(bucket: str) -> str | None:
    """Which of S3's bucket naming rules ``bucket`` breaks, or None."""
    if not bucket:
        return "names no bucket (s3://BUCKET/prefix)"
    if not 3 <= len(bucket) <= 63:
        return f"bucket {bucket!r} is {len(bucket)} long; S3 bucket names are 3 to 63 characters"
    if not _BUCKET_CHARS.fullmatch(bucket):
        if bucket.lower() != bucket and _BUCKET_CHARS.fullmatch(bucket.lower()):
            # Not "create it": S3 would refuse to create this name too.
            return (
                f"bucket {bucket!r} has capitals; S3 bucket names are lowercase (did you mean "
                f"{bucket.lower()!r}?)"
            )
        bad = "".join(dict.fromkeys(c for c in bucket if not re.fullmatch(r"[a-z0-9.-]", c)))
        return (
            f"bucket {bucket!r} holds {bad!r}; S3 bucket names are lowercase letters, digits, dots "
            "and hyphens only"
        )
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return f"bucket {bucket!r} must start and end with a letter or digit"
    if ".." in bucket:
        return f"bucket {bucket!r} has two dots in a row, which S3 bucket names may not"
    try:
        ipaddress.IPv4Address(bucket)
        return f"bucket {bucket!r} is an IP address, which S3 bucket names may not be"
    except ValueError:
        pass
    for prefix in _RESERVED_PREFIXES:
        if bucket.startswith(prefix):
            return f"bucket {bucket!r} starts with {prefix!r}, which S3 reserves"
    for suffix in _RESERVED_SUFFIXES:
        if bucket.endswith(suffix):
            return f"bucket {bucket!r} ends with {suffix!r}, which S3 reserves"
    return None


def s3_problem(uri: str) -> str | None:
    """Which rule ``uri`` breaks as an ``s3://bucket/prefix`` URI, or None."""
    if not is_s3(uri):
        return "is not of the form s3://bucket/prefix (lowercase s3, two slashes)"
    if uri != uri.strip() or any(c.isspace() for c in uri[len(SCHEME) :].partition("/")[0]):
        return "holds spaces around or in the bucket name; S3 bucket names have none"
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    problem = bucket_problem(bucket)
    if problem:
        return problem
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        return f"prefix is {size} bytes; S3 keys are at most {MAX_KEY_BYTES} bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "prefix holds a control character (a newline or tab); remove it"
    return None


def s3_field(value: str, key: str) -> None:
    """A config field's check (common.checks): a value meant as an S3 URI must be a valid one;
    a local path passes."""
    if looks_like_s3(value):
        problem = s3_problem(value)
        if problem:
            raise ConfigError(f"{key} {value!r} {problem}; e.g. {EXAMPLE}")


def check_s3_uri(uri: str, label: str, example: str = EXAMPLE) -> tuple[str, str]:
    """(bucket, prefix) of a valid URI; else a ConfigError: ``label 'uri' <rule>; e.g. example``."""
    problem = s3_problem(uri)
    if problem:
        raise ConfigError(f"{label} {uri!r} {problem}; e.g. {example}")
    return split_s3(uri)
