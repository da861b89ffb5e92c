"""Which S3 prefixes an instance may touch, and the IAM policy document that grants exactly those.

A grant is (access, bucket, prefix): "read" for data (GetObject, and ListBucket limited to the
prefix by a condition on ``s3:prefix``), "write" for checkpoints and backups (read plus PutObject,
DeleteObject, AbortMultipartUpload). Nothing here grants ``s3:*`` or a ``*`` resource: a
bucket-wide grant is spelled ``arn:<partition>:s3:::bucket/*`` and only when the user names the bucket
alone. The document is built deterministically from the grants, so reading it back
(``grants_in``) tells which prefixes a role already covers.

Pure functions: no AWS calls (ec2.cloud.iam puts the document on the role).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from common.s3uri import check_s3_uri, is_s3
from ec2.errors import ConfigError

READ, WRITE = "read", "write"
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
SID_PREFIX = "Spotrun"
# S3 bucket naming rules (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
WRITE_MARK = "rw:"


@dataclass(frozen=True, order=True)
class Grant:
    bucket: str
    prefix: str  # no leading or trailing slash; "" is the whole bucket
    access: str = READ

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def covers(self, other: Grant) -> bool:
        """This grant allows everything ``other`` asks for (same bucket, a parent prefix, at least
        the same access)."""
        if self.bucket != other.bucket or (self.access == READ and other.access == WRITE):
            return False
        return not self.prefix or other.prefix == self.prefix or other.prefix.startswith(self.prefix + "/")

    def describe(self) -> str:
        return f"{self.uri} ({'read/write' if self.access == WRITE else 'read'})"


def grant(uri: str, access: str, setting: str) -> Grant:
    """``s3://bucket/prefix`` → a Grant; a malformed URI names the setting that held it."""
    bucket, prefix = check_s3_uri(uri, setting)
    if "*" in prefix or "?" in prefix:
        raise ConfigError(f"{setting}: {uri!r} holds a wildcard; name the prefix itself (s3://bucket/data)")
    return Grant(bucket, prefix, access)


def from_config(entries: Iterable[str]) -> list[Grant]:
    """The `s3_access` list: ``s3://bucket/prefix`` is read-only, ``rw:s3://bucket/prefix``
    read/write."""
    out = []
    for entry in entries:
        access = WRITE if entry.startswith(WRITE_MARK) else READ
        uri = entry.removeprefix(WRITE_MARK)
        if not is_s3(uri):
            raise ConfigError(
                f"s3_access: {entry!r} is not s3://bucket/prefix (read) or rw:s3://bucket/prefix (read/write)"
            )
        out.append(grant(uri, access, "s3_access"))
    return out


def for_run(dataset_dir: str | None, checkpoint_dir: str | None, backup_uri: str | None) -> list[Grant]:
    """What one training run reads (its data) and writes (its checkpoints, the notice backup);
    local paths need nothing."""
    out = []
    if dataset_dir and is_s3(dataset_dir):
        out.append(grant(dataset_dir, READ, "dataset.dataset_dir"))
    if checkpoint_dir and is_s3(checkpoint_dir):
        out.append(grant(checkpoint_dir, WRITE, "checkpoint_dir"))
    if backup_uri and is_s3(backup_uri):
        out.append(grant(backup_uri, WRITE, "checkpoint_backup_uri"))
    return out


def minimal(grants: Iterable[Grant]) -> list[Grant]:
    """Drop grants another one covers (and duplicates); sorted, so the document is stable."""
    unique = sorted(set(grants))
    return [g for g in unique if not any(o != g and o.covers(g) for o in unique)]


def missing(have: Iterable[Grant], want: Iterable[Grant]) -> list[Grant]:
    have = list(have)
    return [w for w in minimal(want) if not any(h.covers(w) for h in have)]


def _bucket_arn(partition: str, bucket: str) -> str:
    return f"arn:{partition}:s3:::{bucket}"


def _objects_arn(partition: str, g: Grant) -> str:
    return f"{_bucket_arn(partition, g.bucket)}/{g.prefix + '/' if g.prefix else ''}*"


def statements(grants: Iterable[Grant], partition: str = "aws") -> list[dict]:
    """One object statement per grant and one ListBucket statement per bucket and access; the
    list condition admits the prefix itself and everything below it."""
    grants = minimal(grants)
    out: list[dict] = []
    for i, g in enumerate(grants):
        out.append(
            {
                "Sid": f"{SID_PREFIX}{g.access.title()}{i}",
                "Effect": "Allow",
                "Action": WRITE_ACTIONS if g.access == WRITE else READ_ACTIONS,
                "Resource": _objects_arn(partition, g),
            }
        )
    buckets = sorted({g.bucket for g in grants})
    for j, bucket in enumerate(buckets):
        prefixes = sorted({g.prefix for g in grants if g.bucket == bucket})
        listing: dict = {
            "Sid": f"{SID_PREFIX}List{j}",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": _bucket_arn(partition, bucket),
        }
        if "" not in prefixes:
            allowed = sorted({p for p in prefixes} | {f"{p}/*" for p in prefixes})
            listing["Condition"] = {"StringLike": {"s3:prefix": allowed}}
        out.append(listing)
    return out


def policy_document(grants: Iterable[Grant], partition: str = "aws", extra: Iterable[dict] = ()) -> dict:
    """The role's inline policy: the S3 statements, then any ``extra`` statements a caller needs
    (e.g. autoscaling:SetDesiredCapacity on one group), kept as given."""
    return {"Version": "2012-10-17", "Statement": [*statements(grants, partition), *extra]}


def _as_list(value) -> list:
    """IAM lets Statement, Action and Resource be one value or a list of them."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _statements_of(document: dict | str) -> list[dict]:
    if isinstance(document, str):
        document = json.loads(document)
    return [st for st in _as_list((document or {}).get("Statement")) if isinstance(st, dict)]


def _own_sid(sid: str) -> bool:
    """A Sid `statements` gives (SpotrunRead0, SpotrunWrite1, SpotrunList0). Anything else in the
    role's document is another caller's (the detached run's Auto Scaling statement, a user's
    addition) and is kept as it is when the grants are rewritten; an older document's Auto Scaling
    statement was Sid "SpotrunOwnGroup", which shares the prefix, so the prefix alone does not
    decide."""
    for kind in ("Read", "Write", "List"):
        head = SID_PREFIX + kind
        if sid.startswith(head) and sid[len(head) :].isdigit():
            return True
    return False


def _is_own(st: dict) -> bool:
    """A statement `statements` wrote: its Sid and nothing but S3 actions."""
    actions = _as_list(st.get("Action"))
    return _own_sid(str(st.get("Sid", ""))) and all(str(a).startswith("s3:") for a in actions)


def grants_in(document: dict | str) -> list[Grant]:
    """The grants a document built by ``policy_document`` holds (other statements are ignored,
    whatever their shape: one Resource or a list, one Action or a list)."""
    out = []
    for st in _statements_of(document):
        if not _is_own(st) or str(st.get("Sid")).startswith(SID_PREFIX + "List"):
            continue
        access = WRITE if "s3:PutObject" in _as_list(st.get("Action")) else READ
        for resource in _as_list(st.get("Resource")):
            _, found, path = str(resource).partition(":::")
            if not found:
                continue
            bucket, _, rest = path.partition("/")
            out.append(Grant(bucket, rest.removesuffix("*").strip("/"), access))
    return out


def extra_statements(document: dict | str) -> list[dict]:
    """Statements that are not spotrun's S3 grants (kept when the grants are widened)."""
    return [st for st in _statements_of(document) if not _is_own(st)]
