"""Is each S3 prefix a run needs usable, checked from the laptop before an instance is paid for:
the bucket exists (and where), a data prefix lists and holds session folders, a checkpoint prefix
takes a write (a marker object, deleted again).

Each check answers (status, detail, fix); status is "ok", "fail" or "unknown" (the laptop's own
credentials may not reach a bucket the instance's role will: that is not a failure).
"""

from __future__ import annotations

import uuid

import botocore.exceptions

from common.aws import AWS_FAILURES, error_code
from ec2.cloud.s3scope import WRITE, Grant

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
MISSING = {"404", "NoSuchBucket", "NotFound"}
DENIED = {"403", "AccessDenied", "AllAccessDisabled"}


def _code(e: Exception) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        code = error_code(e)
        if code == "Unknown":
            code = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code
    return type(e).__name__


def bucket(s3, name: str, region: str, setting: str) -> tuple[str, str, str]:
    """The bucket exists; its region (a bucket elsewhere works, but is slower and costs transfer)."""
    try:
        response = s3.head_bucket(Bucket=name)
    except AWS_FAILURES as e:
        code = _code(e)
        if code in MISSING:
            return (
                FAIL,
                f"bucket {name} does not exist",
                f"create it (aws s3 mb s3://{name} --region {region}) or fix {setting}",
            )
        if code in DENIED:
            return UNKNOWN, f"bucket {name}: your credentials may not see it ({code})", ""
        return UNKNOWN, f"bucket {name}: S3 did not answer ({code})", ""
    where = response.get("BucketRegion") or response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(
        "x-amz-bucket-region"
    )
    if where and where != region:
        return (
            OK,
            f"bucket {name} in {where} (instances run in {region}: cross-region reads cost transfer)",
            "",
        )
    return OK, f"bucket {name} in {where or region}", ""


def sessions(s3, g: Grant, setting: str) -> tuple[str, str, str]:
    """A dataset prefix lists, and holds session folders (one per recording day)."""
    base = f"{g.prefix}/" if g.prefix else ""
    try:
        folders: list[str] = []
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=g.bucket, Prefix=base, Delimiter="/")
        for page in pages:
            folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    except AWS_FAILURES as e:
        code = _code(e)
        if code in DENIED:
            return UNKNOWN, f"{g.uri}: your credentials may not list it ({code})", ""
        return FAIL, f"{g.uri}: cannot list it ({code})", f"check {setting}"
    if not folders:
        return (
            FAIL,
            f"{g.uri} holds no session folders",
            f"upload the data (aws s3 sync data/hdf5_data_final {g.uri}) or fix {setting}",
        )
    return OK, f"{g.uri} lists, {len(folders)} session folder(s)", ""


def listable(s3, g: Grant, setting: str) -> tuple[str, str, str]:
    try:
        s3.list_objects_v2(Bucket=g.bucket, Prefix=f"{g.prefix}/" if g.prefix else "", MaxKeys=1)
    except AWS_FAILURES as e:
        code = _code(e)
        if code in DENIED:
            return UNKNOWN, f"{g.uri}: your credentials may not list it ({code})", ""
        return FAIL, f"{g.uri}: cannot list it ({code})", f"check {setting}"
    return OK, f"{g.uri} lists", ""


def writable(s3, g: Grant, setting: str) -> tuple[str, str, str]:
    """Write a marker under the prefix and delete it again."""
    key = (
        f"{g.prefix}/.spotrun-doctor-{uuid.uuid4().hex[:12]}"
        if g.prefix
        else f".spotrun-doctor-{uuid.uuid4().hex[:12]}"
    )
    try:
        s3.put_object(Bucket=g.bucket, Key=key, Body=b"spotrun doctor: safe to delete\n")
    except AWS_FAILURES as e:
        code = _code(e)
        if code in DENIED:
            return UNKNOWN, f"{g.uri}: your credentials may not write there ({code})", ""
        return FAIL, f"{g.uri}: a test write failed ({code})", f"check {setting}"
    try:
        s3.delete_object(Bucket=g.bucket, Key=key)
    except AWS_FAILURES as e:
        return (
            FAIL,
            f"{g.uri}: wrote a marker but could not delete s3://{g.bucket}/{key} ({_code(e)})",
            ("delete it by hand; grant s3:DeleteObject"),
        )
    return OK, f"{g.uri} writable (a marker written and deleted)", ""


def prefix(s3, g: Grant, setting: str, dataset: bool) -> tuple[str, str, str]:
    if g.access == WRITE:
        return writable(s3, g, setting)
    return sessions(s3, g, setting) if dataset else listable(s3, g, setting)
