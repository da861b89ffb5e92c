"""The local dataset cache: whole copies of the run's S3 files, so each byte leaves S3 once per machine.

Layout under ``dataset.cache_dir``: ``<bucket>/<key>.<etag>-<size>``, with beside it a ``.ok`` file
(the size, mtime and inode the copy had when its ETag was checked) and a ``.lock`` file. A copy is
used only when its ``.ok`` still describes it; anything else (edited, truncated, or left by a crash)
is checked against the ETag again and discarded when it does not match, never read.

A file is downloaded by one process only: the downloader holds an flock on its ``.lock`` file, so
DataLoader workers and DDP ranks on one machine share one copy. It is filled as ``.partial``
(ml.data.partial) and renamed when complete and checked, so ``ready`` sees the whole file or none.

Readers (any process, any thread) ask ``ready(ref)``: the local path of a checked copy, or None to
keep streaming from S3. Until then they share the partial copy: a trial already in it is read
from it, and a trial they stream is written into it, so the prefetch does not fetch it again.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import s3parts
from common.atomic import atomic_write_text
from ml.config import DATA_CACHE_DEFAULT, NVME_MOUNT
from ml.data import partial
from ml.data.storage import FileRef, s3_client

# Leave this share of the disk free by default.
FREE_SHARE = 0.10
# Errors that mean the disk cannot take the file: the cache turns itself off for the run.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def resolve_dir(setting: str | None, nvme_mount: str = NVME_MOUNT) -> Path | None:
    """The cache folder for ``dataset.cache_dir``: None (off); the default, moved to the NVMe
    instance store when one is mounted; or the folder given."""
    if setting is None or str(setting).lower() in ("", "none", "null"):
        return None
    if setting == DATA_CACHE_DEFAULT and os.path.ismount(nvme_mount) and os.access(nvme_mount, os.W_OK):
        return Path(nvme_mount) / "spotrun" / "data"
    return Path(setting).expanduser()


class DiskFull(OSError):
    """The cache's disk is full (or the file is over a size limit): stream for the rest of the run."""


@dataclass(frozen=True)
class DataCache:
    """Plain, picklable: crosses into DataLoader workers. Per-process state lives in ``_memo``."""

    root: str
    max_bytes: int | None = None  # None: what fits leaving FREE_SHARE of the disk free

    # ------------------------------------------------------------------ paths
    def path(self, ref: FileRef) -> Path:
        bucket, key = ref.bucket_key
        safe_etag = re.sub(r"[^A-Za-z0-9-]", "", ref.version)
        # S3 keys may hold "..", "." or empty segments: never let one climb out of the cache.
        parts = [p if p not in ("", ".", "..") else "_" for p in key.split("/")]
        return Path(self.root, bucket, *parts[:-1], f"{parts[-1]}.{safe_etag}-{ref.size}")

    @staticmethod
    def _ok(path: Path) -> Path:
        return path.with_name(path.name + ".ok")

    # ------------------------------------------------------------------ reading
    def ready(self, ref: FileRef) -> str | None:
        """The local path of a complete, checked copy of ``ref``; None: read it from S3."""
        path = self.path(ref)
        memo = _memo()
        if str(path) in memo:
            return str(path)
        if self._trusted(path, ref):
            memo.add(str(path))
            return str(path)
        return None

    def _trusted(self, path: Path, ref: FileRef) -> bool:
        try:
            st = path.stat()
            seal = json.loads(self._ok(path).read_text())
        except (OSError, ValueError):
            return False
        return seal == _seal(st, ref)

    # ------------------------------------------------------------------ writing (the prefetcher)
    def budget_bytes(self) -> int:
        """Bytes the cache may still add: up to max_bytes in all, and never past FREE_SHARE free."""
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(root)
        room = int(disk.free - FREE_SHARE * disk.total)
        if self.max_bytes is not None:
            room = min(room, self.max_bytes - self.used_bytes())
        return max(room, 0)

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in Path(self.root).rglob("*") if p.is_file())

    def fetch(self, ref: FileRef, on_bytes=None) -> tuple[str, int]:
        """Make sure a checked copy of ``ref`` is in the cache: (its path, bytes downloaded now).

        Under the file's lock: a copy another process finished meanwhile is used as it is; a copy
        that does not match its ETag is discarded; otherwise the partial file (ml.data.partial) is
        filled with parallel ranged GETs of its gaps (what training streamed meanwhile is not
        fetched again), checked against the ETag, and renamed into place.
        Raises DiskFull when the disk cannot take it, and S3's errors for the caller to retry (a
        retry resumes from what is already in).
        """
        path = self.path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.download_lock(path):
            if self._trusted(path, ref):
                return str(path), 0
            if path.exists() and self._check_or_discard(path, ref):
                return str(path), 0
            _remove_stale_temps(path)
            try:
                partial.start(path, ref.size)
                fetched = partial.fill(path, ref.size, partial_getter(ref), on_bytes)
                with partial.fill_lock(path, exclusive=True):
                    staged = partial.partial_path(path)
                    if s3parts.matches_etag(staged, ref.version, ref.size) is False:
                        raise _Mismatch
                    with open(staged, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(staged, path)
                    partial.ranges_path(path).unlink(missing_ok=True)
                    partial.claims_path(path).unlink(missing_ok=True)
                    partial.streams_path(path).unlink(missing_ok=True)
                self._seal(path, ref)
            except _Mismatch:
                partial.drop(path)
                raise OSError(f"{ref.uri}: the download does not match its ETag {ref.version}") from None
            except OSError as e:
                if e.errno in DISK_FULL:
                    partial.drop(path)  # a half copy on a full disk helps nobody
                    raise DiskFull(e.errno, f"{self.root}: {e.strerror}") from None
                raise
            return str(path), fetched

    # ------------------------------------------------------------------ the partial copy
    def open_partial(self, ref: FileRef) -> None:
        """Start the (sparse, empty) partial copy now, before the prefetch reaches the file, so
        the trials training streams meanwhile are kept and not fetched again."""
        path = self.path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.download_lock(path):
            if not self._trusted(path, ref) and not path.exists():
                partial.start(path, ref.size, new_run=True)

    def drop_partial(self, ref: FileRef) -> None:
        try:
            partial.drop(self.path(ref))
        except OSError:
            pass  # best effort: the next fetch of the file starts it afresh

    def read_partial(self, ref: FileRef, offset: int, size: int, fetch=None) -> bytes | None:
        """A range of a file still being fetched, if it is already in the partial copy or arrives
        (ml.data.partial.read; ``fetch``: a ranged GET for the parts nobody is fetching)."""
        return partial.read(self.path(ref), offset, size, fetch=fetch)

    def streaming(self, ref: FileRef, offset: int, size: int) -> None:
        """About to GET this range of a file still being fetched: the prefetch leaves it to us."""
        partial.streaming(self.path(ref), offset, size)

    def record(self, ref: FileRef, offset: int, data: bytes) -> None:
        """A range streamed from S3: into the partial copy, so the prefetch need not fetch it."""
        partial.record(self.path(ref), offset, data)

    def _check_or_discard(self, path: Path, ref: FileRef) -> bool:
        """A copy without a valid seal: keep it if its ETag matches, else delete it."""
        if s3parts.matches_etag(path, ref.version, ref.size):
            self._seal(path, ref)
            return True
        path.unlink(missing_ok=True)
        self._ok(path).unlink(missing_ok=True)
        return False

    def _seal(self, path: Path, ref: FileRef) -> None:
        atomic_write_text(self._ok(path), json.dumps(_seal(path.stat(), ref)))


def partial_getter(ref: FileRef):
    """Ranged GETs of ``ref``, pinned to its listed ETag: an object replaced meanwhile answers 412
    (PreconditionFailed) instead of mixing two versions in one copy."""
    bucket, key = ref.bucket_key
    client = s3_client()

    def get_range(offset: int, length: int) -> Iterator[bytes]:
        resp = client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}", IfMatch=f'"{ref.version}"'
        )
        # In chunks as they arrive, so readers waiting for the piece see it grow (ml.data.partial).
        yield from resp["Body"].iter_chunks(partial.CHUNK)

    return get_range


class _Mismatch(Exception):
    pass


def _seal(st: os.stat_result, ref: FileRef) -> dict:
    return {
        "etag": ref.version,
        "size": st.st_size,
        "want": ref.size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
    }


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of this name left by a crashed download (none can be live: we hold the lock)."""
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        p.unlink(missing_ok=True)


# Paths this process has seen complete and sealed. A forked child inherits them, which is right:
# a sealed copy stays valid. No lock: adding to a set is atomic under the GIL.
_memo_paths: set[str] = set()


def _memo() -> set[str]:
    return _memo_paths


def forget() -> None:
    """Forget the copies this process has seen (tests that edit the cache behind its back)."""
    _memo_paths.clear()
