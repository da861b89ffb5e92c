"""A detached run's code as one content-addressed bundle in S3: exactly the files `fab sync`
sends (the same rsync filters: ec2.remote.sync.code_filters), as a reproducible tar.gz named by its
SHA-256, so an unchanged tree is uploaded once and every instance of the run unpacks the same code.

The boot's user data fetches it with the instance role and unpacks it into REMOTE_DIR/code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from common.aws import error_code, translate
from common.s3uri import split_s3
from ec2.errors import ToolkitError
from ec2.remote.sync import RSYNC_BIN, code_filters


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str
    files: int

    @property
    def filename(self) -> str:
        return f"bundle-{self.sha256[:16]}.tar.gz"


def stage(local_root: Path, dest: Path) -> None:
    """Copy what `fab sync` would send into `dest` (rsync itself applies the filters)."""
    argv = [RSYNC_BIN, "-a", *code_filters(), f"{Path(local_root).resolve()}/", f"{dest}/"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ToolkitError(
            f"collecting the code to bundle failed (rsync exit {result.returncode}): {result.stderr.strip()}"
        )


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Only content and modes make the address: no times, owners or names of this machine.
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build(local_root: Path | str = ".") -> Bundle:
    local_root = Path(local_root)
    if not local_root.is_dir():
        raise ToolkitError(f"{local_root} is not a folder; run from the project root")
    with tempfile.TemporaryDirectory(prefix="spotrun-bundle-") as tmp:
        staged = Path(tmp)
        stage(local_root, staged)
        paths = sorted(p for p in staged.rglob("*") if p.is_file() or p.is_symlink())
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in paths:
                tar.add(path, arcname=str(path.relative_to(staged)), recursive=False, filter=_reproducible)
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest(), files=len(paths))


def bundle_uri(base: str, bundle: Bundle) -> str:
    return f"{base.rstrip('/')}/{bundle.filename}"


def upload(s3, base: str, bundle: Bundle) -> tuple[str, bool]:
    """Put the bundle under `base` unless an identical one is there: (its URI, uploaded now)."""
    uri = bundle_uri(base, bundle)
    bucket, key = split_s3(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return uri, False
    except botocore.exceptions.ClientError as e:
        if error_code(e) not in ("404", "NoSuchKey", "NotFound"):
            raise translate(e, f"checking {uri}") from None
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=bundle.data, ContentType="application/gzip")
    except botocore.exceptions.ClientError as e:
        raise translate(e, f"uploading the code bundle to {uri}") from None
    return uri, True


def delete(s3, uri: str) -> None:
    bucket, key = split_s3(uri)
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        raise translate(e, f"deleting {uri}") from None
