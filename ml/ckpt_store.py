"""Where checkpoints live: a local folder, or s3://bucket/prefix through a local staging folder.

With an s3:// checkpoint_dir every file is first written (atomically) into a staging folder, then
copied up by one background thread, so a training step never waits on the network. The upload
reads a hard-linked snapshot, so the next atomic save may replace the staged file mid-upload
without mixing two versions; a newer snapshot of the same file waiting in the queue replaces the
older one (only the newest last.pt matters). ``flush()`` waits for the queue: the trainer calls it
at exit, before reporting "checkpoint saved". An S3 PUT is all-or-nothing, so the bucket also only
ever holds whole files.

boto3 comes from common.aws (the one door); the endpoint comes from the standard AWS_ENDPOINT_URL
variables, which is how tests point this at moto's server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3.exceptions
import botocore.exceptions

from common import aws
from common.atomic import atomic_path
from common.s3uri import is_s3, s3_problem, split_s3
from ml.errors import CheckpointError

# The files of a checkpoint folder. Named here, where they are kept, and not in ml/checkpoint.py (the
# format), so that the trainer's input checks can use the store before torch is imported.
LAST = "last.pt"
BEST = "best.pt"
REFERENCE_BEST = "best_checkpoint"
ARGS = "args.yaml"

OURS = (LAST, BEST, REFERENCE_BEST)
# What a boto3 call or transfer may raise for an AWS-side or network failure.
_AWS_FAILURES = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.Boto3Error,
)


def split_checkpoint_uri(uri: str) -> tuple[str, str]:
    problem = s3_problem(uri)
    if problem:
        raise CheckpointError(f"checkpoint_dir {uri!r} {problem}; e.g. s3://my-bucket/checkpoints")
    return split_s3(uri)


class CheckpointStore:
    """The checkpoint folder. ``path(name)`` is where to write; ``publish(names)`` makes them durable
    where the user asked (a no-op locally; a background upload for S3)."""

    def __init__(self, checkpoint_dir: str, staging_root: str | Path, warn: Callable[[str], None] = print):
        self.uri = checkpoint_dir
        self.remote = is_s3(checkpoint_dir)
        if self.remote:
            self.bucket, self.prefix = split_checkpoint_uri(checkpoint_dir)
            digest = hashlib.sha1(checkpoint_dir.encode()).hexdigest()[:12]
            self.local_dir = Path(staging_root).expanduser() / digest
            self._uploader = _Uploader(self, warn)
        else:
            self.local_dir = Path(checkpoint_dir)
            self._uploader = None

    def path(self, name: str) -> Path:
        return self.local_dir / name

    def where(self, name: str) -> str:
        """The user-facing location of ``name`` (its S3 URI when remote)."""
        return f"{self.uri.rstrip('/')}/{name}" if self.remote else str(self.path(name))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def check(self) -> None:
        """Fail before training, not at the first upload, when the bucket cannot be used."""
        if not self.remote:
            return
        try:
            # A LIST under our own prefix, not HeadBucket: HeadBucket needs s3:ListBucket with no
            # prefix, which a role scoped to this prefix (iam_instance_profile: auto) lacks.
            self._client().list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise CheckpointError(
                    f"checkpoint_dir {self.uri}: bucket {self.bucket} does not exist [NoSuchBucket]; "
                    "create it (aws s3 mb s3://" + self.bucket + ") or fix checkpoint_dir"
                ) from None
            raise self._error(e, f"checking bucket {self.bucket}") from None
        except _AWS_FAILURES as e:
            raise self._error(e, f"checking bucket {self.bucket}") from None

    def existing(self) -> list[str]:
        """Which of our checkpoint files already exist at the destination."""
        if not self.remote:
            return [n for n in OURS if self.path(n).is_file()]
        found = []
        for name in OURS:
            if self._head(name):
                found.append(name)
        return found

    def fetch_last(self) -> Path | None:
        """The newest resumable checkpoint (last.pt) as a local file, or None when there is none."""
        return self.fetch(LAST)

    def fetch(self, name: str) -> Path | None:
        """``name`` as a local file, downloaded from S3 first when remote; None when absent."""
        if not self.remote:
            p = self.path(name)
            return p if p.is_file() else None
        if not self._head(name):
            return None
        target = self.path(name)
        try:
            with atomic_path(target) as tmp:
                self._client().download_file(self.bucket, self.key(name), str(tmp))
        except _AWS_FAILURES as e:
            raise self._error(e, f"downloading {self.where(name)}") from None
        return target

    def clean_partial(self) -> None:
        """Remove temporary files left by a write that was killed (kill -9, power loss)."""
        if self.local_dir.is_dir():
            for tmp in self.local_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            for snap in self.local_dir.glob(".upload.*"):
                snap.unlink(missing_ok=True)

    def publish(self, names: list[str]) -> None:
        if self._uploader is not None:
            for name in names:
                self._uploader.submit(name)

    def flush(self) -> None:
        """Wait for every queued upload; raise CheckpointError if the newest copy did not arrive."""
        if self._uploader is not None:
            self._uploader.wait()

    def on_uploaded(self, name: str, hook: Callable[[int, float, str | None], None]) -> None:
        """Call ``hook(bytes, seconds, error)`` once, from the upload thread, when the next copy of
        ``name`` published from now on has gone up (``error`` None) or failed (the fits-the-notice
        check times the real checkpoint this way, at no cost to training)."""
        if self._uploader is not None:
            self._uploader.hooks[name] = hook

    def restage(self, root: str | Path) -> None:
        """Stage the next saves under ``root`` (a faster disk) instead. Files already queued keep
        their own snapshots; resuming still reads S3, so nothing needs to move."""
        digest = hashlib.sha1(self.uri.encode()).hexdigest()[:12]
        self.local_dir = Path(root).expanduser() / digest
        self.local_dir.mkdir(parents=True, exist_ok=True)

    # ---- S3 plumbing ----

    def _client(self):
        return aws.client("s3")

    def _head(self, name: str) -> bool:
        try:
            self._client().head_object(Bucket=self.bucket, Key=self.key(name))
            return True
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(e, f"checking {self.where(name)}") from None
        except _AWS_FAILURES as e:
            raise self._error(e, f"checking {self.where(name)}") from None

    def _error(self, e: Exception, doing: str) -> CheckpointError:
        if isinstance(e, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
            return CheckpointError(f"checkpoint_dir {self.uri}: {aws.translate(e, doing)}")
        return CheckpointError(f"checkpoint_dir {self.uri}: {doing}: {e}")


class _Uploader:
    """One daemon thread copying staged files up, newest snapshot per name."""

    def __init__(self, store: CheckpointStore, warn: Callable[[str], None]):
        self.store = store
        self.warn = warn
        self._cond = threading.Condition()
        self._pending: dict[str, Path] = {}  # name -> snapshot, insertion-ordered
        self._busy = False
        self._failed: dict[str, str] = {}  # name -> message of its newest failed copy
        self._counter = 0
        self.hooks: dict[str, Callable[[int, float, str | None], None]] = {}  # see on_uploaded
        self._hooked: dict[Path, Callable[[int, float, str | None], None]] = {}
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, name: str) -> None:
        src = self.store.path(name)
        with self._cond:
            self._counter += 1
            snap = src.with_name(f".upload.{name}.{self._counter}")
            try:
                os.link(src, snap)  # same inode: later renames over `src` do not touch it
            except OSError:
                shutil.copyfile(src, snap)
            older = self._pending.pop(name, None)
            if older is not None:
                older.unlink(missing_ok=True)
                if (hook := self._hooked.pop(older, None)) is not None:
                    self._hooked[snap] = hook  # the newer copy replaces it in the queue: time that one
            if (hook := self.hooks.pop(name, None)) is not None:
                self._hooked[snap] = hook
            self._pending[name] = snap
            self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            while self._pending or self._busy:
                self._cond.wait()
            failed = dict(self._failed)
        if failed:
            name, message = next(iter(failed.items()))
            raise CheckpointError(
                f"copying {name} to {self.store.where(name)} failed ({message}); the local copy is in "
                f"{self.store.local_dir}"
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                name = next(iter(self._pending))
                snap = self._pending.pop(name)
                self._busy = True
                hook = self._hooked.pop(snap, None)
            started, error, size = time.monotonic(), None, 0
            try:
                size = snap.stat().st_size
                # boto3's default TransferConfig: multipart above 8 MB, 8 MB parts, 10 at a time
                # (https://docs.aws.amazon.com/boto3/latest/guide/s3.html, "File transfer
                # configuration"); left as is: nothing measured here shows a better one for real S3.
                self.store._client().upload_file(str(snap), self.store.bucket, self.store.key(name))
                with self._cond:
                    self._failed.pop(name, None)
            except (*_AWS_FAILURES, OSError) as e:
                message = str(self.store._error(e, "upload")) if not isinstance(e, OSError) else str(e)
                self.warn(f"warning: copying {name} to S3 failed ({message}); retrying at the next save")
                error = message
                with self._cond:
                    self._failed[name] = message
            finally:
                seconds = time.monotonic() - started
                snap.unlink(missing_ok=True)
                try:
                    if hook is not None:  # before flush() may return: the run's log is still open
                        hook(size, seconds, error)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()


__all__ = ["CheckpointStore", "ARGS"]
