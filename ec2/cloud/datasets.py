"""A Brain-to-Text dataset in S3: `fab data-push` uploads a local folder, `fab data-ls` shows one.

The layout is the release's: ``<root>/<session>/data_{train,val,test}.hdf5``, every session with a
train file. A push checks the whole folder first (layout, and every file readable as a Brain-to-Text
file, by building its trial index) so a bad folder uploads nothing. Then per file:

- already there with the same size and ETag (computed locally with the same part size,
  common.s3parts): skipped, so a second push uploads nothing and an interrupted push resumes;
- otherwise uploaded as a multipart upload with parallel parts. Until S3 completes a multipart
  upload there is no object, and on Ctrl-C boto3's transfer manager aborts it: never half a file.
- then read back (HEAD) and checked: size and ETag.

Beside each file goes its trial index, named by the file's ETag (ml.data.storage.index_key), so a
fresh instance reads one small object per file instead of walking the HDF5 metadata over S3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions
from boto3.exceptions import S3UploadFailedError

from common import aws, guard, s3parts
from common.errors import ToolkitError
from common.s3uri import is_s3, split_s3
from ml.data.index import build_index, index_bytes
from ml.data.storage import FILE_KINDS, FileRef, index_key
from ml.errors import DataError


class DatasetError(ToolkitError):
    """The dataset folder or the destination cannot be used as given."""


@dataclass(frozen=True)
class LocalFile:
    session: str
    name: str
    path: Path
    size: int


@dataclass
class PushResult:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    total_bytes: int = 0
    indexes_written: int = 0

    def line(self) -> str:
        return (
            f"uploaded {len(self.uploaded)} files ({self.uploaded_bytes / 1e9:.2f} GB), "
            f"skipped {len(self.skipped)} already there; dataset {self.total_bytes / 1e9:.2f} GB in "
            f"{len(self.uploaded) + len(self.skipped)} files"
        )


# ---------------------------------------------------------------- the local folder


def scan_layout(src: str | Path) -> list[LocalFile]:
    """The folder's files, or a DatasetError naming what is not the layout."""
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; pass --src DIR, the folder holding the session folders")
    loose = sorted(p.name for p in root.glob("*.hdf5"))
    if loose:
        raise DatasetError(
            f"{root}: holds {loose[0]} directly; pass the folder above the session folders "
            "(<src>/<session>/data_train.hdf5)"
        )
    files: list[LocalFile] = []
    for session in sorted(p for p in root.iterdir() if p.is_dir()):
        found = sorted(p for p in session.glob("*.hdf5") if p.is_file())
        if not found:
            continue
        unknown = [p.name for p in found if p.name not in FILE_KINDS]
        if unknown:
            raise DatasetError(
                f"{session}/{unknown[0]}: not a dataset file name; rename it to one of "
                + ", ".join(FILE_KINDS)
            )
        if not (session / "data_train.hdf5").is_file():
            raise DatasetError(f"{session}: no data_train.hdf5; every session needs a train file")
        files += [LocalFile(session.name, p.name, p, p.stat().st_size) for p in found]
    if not files:
        raise DatasetError(f"{root}: no session folders with data_*.hdf5 files; check --src")
    return files


def build_indexes(files: list[LocalFile], bucket: str, prefix: str) -> dict[str, bytes]:
    """Each file's trial index as stored in S3 (also checks every file reads as Brain-to-Text)."""
    out = {}
    for f in files:
        key = _key(prefix, f)
        ref = FileRef(f"s3://{bucket}/{key}", f.size, "")
        try:
            out[key] = index_bytes(build_index(ref, local=str(f.path)))
        except DataError as e:
            raise DatasetError(f"{f.path}: {str(e).split(': ', 1)[-1]}") from None
    return out


def _key(prefix: str, f: LocalFile) -> str:
    return f"{prefix}/{f.session}/{f.name}" if prefix else f"{f.session}/{f.name}"


# ---------------------------------------------------------------- S3


def _listing(s3, bucket: str, prefix: str) -> dict[str, dict]:
    """{key: {Size, ETag}} under the prefix; a missing or unreadable bucket is a DatasetError."""
    base = f"{prefix}/" if prefix else ""
    out = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = {"Size": obj["Size"], "ETag": obj["ETag"].strip('"')}
    except botocore.exceptions.ClientError as e:
        raise _bucket_error(e, bucket, "s3:ListBucket") from None
    except botocore.exceptions.BotoCoreError as e:
        raise aws.translate(e, f"listing s3://{bucket}/{prefix}") from None
    return out


def _bucket_error(e: botocore.exceptions.ClientError, bucket: str, action: str) -> DatasetError:
    code = aws.error_code(e)
    if code in ("NoSuchBucket", "404"):
        return DatasetError(
            f"s3://{bucket}: S3 NoSuchBucket; create it (aws s3 mb s3://{bucket} --region <your region>) "
            "or fix --dest"
        )
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return DatasetError(
            f"s3://{bucket}: S3 AccessDenied; your identity needs {action} on the bucket {bucket} "
            "(or use another --dest / AWS_PROFILE)"
        )
    return DatasetError(aws.s3_failure(e, f"s3://{bucket}", "--dest"))


def push(
    s3,
    src: str | Path,
    dest: str,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
    say: Callable[[str], None] = print,
    force: bool = False,
) -> PushResult:
    """Upload ``src`` to ``dest`` (s3://bucket/prefix): skip what is there, verify what is sent.
    An object of the same key with other contents (another dataset's file) is replaced only with
    ``force``: checked for every file before the first upload.

    ``progress(total_bytes, initial)`` returns a per-chunk byte callback (a tqdm bar's update).
    """
    if not is_s3(dest):
        raise DatasetError(f"{dest}: not an s3:// URI; pass --dest s3://bucket/prefix")
    bucket, prefix = split_s3(dest)
    files = scan_layout(src)
    there = _listing(s3, bucket, prefix)
    say(
        f"checking {len(files)} files ({sum(f.size for f in files) / 1e9:.2f} GB) against s3://{bucket}/{prefix}"
    )
    indexes = build_indexes(files, bucket, prefix)
    result = PushResult(total_bytes=sum(f.size for f in files))

    todo: list[tuple[LocalFile, str]] = []
    etags: dict[str, str] = {}
    for f in files:
        key = _key(prefix, f)
        etags[key] = s3parts.local_etag(f.path)
        old = there.get(key)
        if old and old["Size"] == f.size and old["ETag"] == etags[key]:
            result.skipped.append(key)
        else:
            todo.append((f, key))
    guard.unless_forced(
        force,
        target=f"pushing to {dest}",
        lost=[f"s3://{bucket}/{key} (other contents)" for _, key in todo if key in there],
        verb="replace",
        instead="push to another prefix",
    )
    update = progress(sum(f.size for f, _ in todo), 0) if progress else None
    for f, key in todo:
        _upload(s3, f, bucket, key, update)
        _verify(s3, bucket, key, f, etags[key])
        result.uploaded.append(key)
        result.uploaded_bytes += f.size

    for key, body in indexes.items():
        sidecar = index_key(key, etags[key])
        if sidecar not in there:
            try:
                s3.put_object(Bucket=bucket, Key=sidecar, Body=body)
            except botocore.exceptions.ClientError as e:
                raise _bucket_error(e, bucket, "s3:PutObject") from None
            result.indexes_written += 1
    return result


def _upload(s3, f: LocalFile, bucket: str, key: str, update) -> None:
    try:
        s3.upload_file(str(f.path), bucket, key, Config=s3parts.transfer_config(), Callback=update)
    except S3UploadFailedError as e:
        # boto3 raises S3UploadFailedError while handling the ClientError that says why.
        if isinstance(e.__context__, botocore.exceptions.ClientError):
            raise _bucket_error(e.__context__, bucket, "s3:PutObject") from None
        raise DatasetError(f"s3://{bucket}/{key}: upload failed ({e}); run the push again") from None
    except botocore.exceptions.BotoCoreError as e:
        raise aws.translate(e, f"uploading s3://{bucket}/{key}; run the push again to resume") from None


def _verify(s3, bucket: str, key: str, f: LocalFile, etag: str) -> None:
    head = s3.head_object(Bucket=bucket, Key=key)
    got = head["ETag"].strip('"')
    if head["ContentLength"] != f.size or (s3parts.part_sizes_for(got, f.size) and got != etag):
        raise DatasetError(
            f"s3://{bucket}/{key}: after upload S3 has {head['ContentLength']} bytes, ETag {got}; expected "
            f"{f.size} bytes, ETag {etag}; run the push again"
        )


# ---------------------------------------------------------------- data-ls


@dataclass
class SessionListing:
    session: str
    files: dict[str, int]  # file name → size
    indexed: set[str]

    @property
    def missing(self) -> list[str]:
        return [k for k in FILE_KINDS if k not in self.files]


def listing(s3, uri: str) -> list[SessionListing]:
    if not is_s3(uri):
        raise DatasetError(f"{uri}: not an s3:// URI; pass s3://bucket/prefix")
    bucket, prefix = split_s3(uri)
    base = f"{prefix}/" if prefix else ""
    objects = _listing(s3, bucket, prefix)
    sessions: dict[str, SessionListing] = {}
    for key, obj in objects.items():
        session, _, name = key[len(base) :].partition("/")
        if not name or "/" in name or name not in FILE_KINDS:
            continue
        entry = sessions.setdefault(session, SessionListing(session, {}, set()))
        entry.files[name] = obj["Size"]
        if index_key(key, obj["ETag"]) in objects:  # an index for this version of the file
            entry.indexed.add(name)
    return [s for _, s in sorted(sessions.items())]


def listing_lines(uri: str, sessions: list[SessionListing]) -> list[str]:
    if not sessions:
        return [f"{uri}: no session folders with data_*.hdf5 files"]
    lines = [f"{uri}: {len(sessions)} sessions"]
    total = 0
    no_train = 0
    for s in sessions:
        cells = []
        for kind in FILE_KINDS:
            short = kind[len("data_") : -len(".hdf5")]
            if kind in s.files:
                total += s.files[kind]
                cells.append(f"{short} {s.files[kind] / 1e6:7.1f} MB")
            else:
                cells.append(f"{short} {'-':>7}   ")
        notes = []
        if s.missing:
            notes.append("missing " + ", ".join(s.missing))
        if "data_train.hdf5" not in s.files:
            no_train += 1
        unindexed = [k for k in s.files if k not in s.indexed]
        if unindexed:
            notes.append("no stored index for " + ", ".join(unindexed))
        lines.append(f"  {s.session:<16} " + "  ".join(cells) + (f"  ({'; '.join(notes)})" if notes else ""))
    n_files = sum(len(s.files) for s in sessions)
    lines.append(f"total {total / 1e9:.2f} GB in {n_files} files")
    if no_train:
        lines.append(f"{no_train} sessions have no data_train.hdf5: training on them will fail")
    return lines
