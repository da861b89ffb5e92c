"""Where the dataset lives: a local folder or ``s3://bucket/prefix``, and how bytes come out of it.

Clients, filesystems and file descriptors are made lazily and kept per process (keyed by
``os.getpid()``): a forked DataLoader worker must never use the parent's s3fs event loop, boto3
connection pool or open descriptors, so it makes its own on first use. Everything that crosses a
fork is plain data (``FileRef``).

The boto3 client comes from common/aws.py, the one door to AWS (which also forgets its clients in a
forked child). On an instance it needs no launcher configuration: credentials come from the IAM role,
endpoint and region from the standard variables (AWS_ENDPOINT_URL[_S3], AWS_REGION).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py

from common import aws
from common.s3uri import is_s3, split_s3
from ml.errors import DataError

FILE_KINDS = ("data_train.hdf5", "data_val.hdf5", "data_test.hdf5")
# h5py over s3fs reads many small pieces; a block cache turns them into fewer, larger GETs.
# Index builds touch a few hundred bytes of metadata per trial, scattered between the trials'
# features: 64 KB blocks cost about 1.3 GETs per trial on the synthetic files. Feature reads on the
# chunked/compressed fallback want larger blocks.
INDEX_BLOCK_SIZE = 64 * 1024
H5_BLOCK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class FileRef:
    """One HDF5 file: a local absolute path or an s3:// URI, with what identifies its version."""

    uri: str
    size: int
    version: str  # S3: the ETag; local: mtime in ns
    # S3: the trial index `fab data-push` stored beside the file for this ETag ("" when none).
    index_uri: str = ""

    @property
    def is_s3(self) -> bool:
        return is_s3(self.uri)

    @property
    def bucket_key(self) -> tuple[str, str]:
        return split_s3(self.uri)


# ---------------------------------------------------------------- per-process clients and handles

_lock = threading.Lock()
_state: dict[str, object] = {"pid": None}


def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at the fork: never let go here


os.register_at_fork(after_in_child=_new_lock_in_child)


def _proc() -> dict[str, object]:
    """This process's clients and handles; a fresh, empty set after a fork."""
    pid = os.getpid()
    if _state.get("pid") != pid:
        with _lock:
            if _state.get("pid") != pid:
                _state.clear()
                _state.update(pid=pid, fds={}, h5={})
    return _state


def s3_client():
    """This process's S3 client, with its GET requests counted (see ``s3_traffic``)."""
    client = aws.client("s3")
    st = _proc()
    if st.get("counted") is not client:
        client.meta.events.register("after-call.s3.GetObject", _count_get)
        client.meta.events.register("after-call.s3.ListObjectsV2", _count_list)
        st["counted"] = client
    return client


# ---------------------------------------------------------------- what the run read from S3

# Shared memory created at import, before any DataLoader worker forks, so the workers' GETs add to
# the same counters as the main process's (the prefetcher, the index). [GETs, bytes, LISTs]
_TRAFFIC = multiprocessing.Array("q", 3)
# S3 Standard request prices (us-east-1 list prices, USD per 1,000 requests). Transfer from S3 to
# EC2 in the same region is free, so requests are the data path's whole S3 bill.
GET_USD_PER_1000 = 0.0004
LIST_USD_PER_1000 = 0.005


def _count_get(http_response=None, parsed=None, **_) -> None:
    if http_response is not None and http_response.status_code < 300:
        with _TRAFFIC.get_lock():
            _TRAFFIC[0] += 1
            _TRAFFIC[1] += int((parsed or {}).get("ContentLength") or 0)


def _count_list(http_response=None, **_) -> None:
    if http_response is not None and http_response.status_code < 300:
        with _TRAFFIC.get_lock():
            _TRAFFIC[2] += 1


@dataclass(frozen=True)
class S3Traffic:
    gets: int
    bytes: int
    lists: int

    @property
    def request_usd(self) -> float:
        return self.gets * GET_USD_PER_1000 / 1000 + self.lists * LIST_USD_PER_1000 / 1000

    def line(self) -> str:
        """e.g. 'read from S3: 1,234 GETs, 10.52 GB, $0.0005 in requests' (parsed by `fab run`)."""
        return (
            f"read from S3: {self.gets:,} GETs, {self.bytes / 1e9:.2f} GB, "
            f"${self.request_usd:.6f} in requests"
        )


def s3_traffic() -> S3Traffic:
    """What this process and its DataLoader workers have read from S3 through the data path."""
    with _TRAFFIC.get_lock():
        return S3Traffic(int(_TRAFFIC[0]), int(_TRAFFIC[1]), int(_TRAFFIC[2]))


def s3_filesystem():
    st = _proc()
    if "s3fs" not in st:
        import s3fs  # only the S3 paths need it

        with _lock:
            if "s3fs" not in st:
                # Our own per-process instance: fsspec's instance cache would hand a forked child
                # the parent's event loop.
                # The same bounded timeouts and tries as every boto3 client (common/aws.py);
                # s3fs's own retry loop (5 tries of botocore's) is turned off, so a silent
                # endpoint costs one budget, not five.
                each = aws.per_try_timeout()
                fs = s3fs.S3FileSystem(
                    skip_instance_cache=True,
                    config_kwargs={
                        "connect_timeout": each,
                        "read_timeout": each,
                        "retries": {"mode": "standard", "total_max_attempts": aws.ATTEMPTS},
                    },
                )
                fs.retries = 1
                st["s3fs"] = fs
    return st["s3fs"]


def s3_error(err: Exception, where: str) -> DataError:
    """A one-line DataError naming the S3 object and the next step."""
    return DataError(aws.s3_failure(err, where, "dataset.dataset_dir"))


S3_ERRORS = aws.S3_FAILURES


# ---------------------------------------------------------------- listing the dataset


def list_sessions(dataset_dir: str, sessions: list[str]) -> dict[str, dict[str, FileRef]]:
    """``{session: {file name: FileRef}}`` for each configured session; a missing session folder or
    train file is a DataError naming it."""
    found = _list_s3(dataset_dir, sessions) if is_s3(dataset_dir) else _list_local(dataset_dir, sessions)
    for s in sessions:
        where = f"{dataset_dir.rstrip('/')}/{s}"
        if s not in found:
            raise DataError(f"{where}: session folder not found; check dataset.dataset_dir and sessions")
        if "data_train.hdf5" not in found[s]:
            raise DataError(f"{where}/data_train.hdf5: train file not found; every session needs one")
    return found


def _list_local(dataset_dir: str, sessions: list[str]) -> dict[str, dict[str, FileRef]]:
    root = Path(dataset_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; check dataset.dataset_dir")
    out: dict[str, dict[str, FileRef]] = {}
    for s in sessions:
        if not (root / s).is_dir():
            continue
        out[s] = {}
        for name in FILE_KINDS:
            p = root / s / name
            if p.is_file():
                st = p.stat()
                out[s][name] = FileRef(str(p), st.st_size, str(st.st_mtime_ns))
    return out


def _list_s3(dataset_dir: str, sessions: list[str]) -> dict[str, dict[str, FileRef]]:
    """One LIST of the dataset prefix: existence, size and ETag of every file in one go."""
    bucket, prefix = split_s3(dataset_dir)
    base = f"{prefix}/" if prefix else ""
    wanted = set(sessions)
    out: dict[str, dict[str, FileRef]] = {}
    keys: set[str] = set()
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        for page in pages:
            for obj in page.get("Contents", []):
                keys.add(obj["Key"])
                session, _, name = obj["Key"][len(base) :].partition("/")
                if session not in wanted:
                    continue
                files = out.setdefault(session, {})
                if name in FILE_KINDS:
                    etag = obj["ETag"].strip('"')
                    files[name] = FileRef(f"s3://{bucket}/{obj['Key']}", obj["Size"], etag)
    except S3_ERRORS as e:
        raise s3_error(e, dataset_dir) from None
    # The same LIST shows which files have their trial index stored beside them.
    for files in out.values():
        for name, ref in files.items():
            sidecar = index_key(ref.bucket_key[1], ref.version)
            if sidecar in keys:
                files[name] = FileRef(ref.uri, ref.size, ref.version, f"s3://{bucket}/{sidecar}")
    return out


# Bump when the index layout changes (ml.data.index), so old stored indexes are ignored.
INDEX_FORMAT = 1


def index_key(key: str, etag: str) -> str:
    """Where `fab data-push` stores the trial index of the object ``key`` with ``etag``: beside it,
    named by the ETag, so a replaced file never meets a stale index."""
    return f"{key}.index-v{INDEX_FORMAT}-{etag.strip(chr(34))}.npz"


# ---------------------------------------------------------------- reading bytes


def read_range(ref: FileRef, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``: one ranged GET on S3, one pread locally."""
    if ref.is_s3:
        bucket, key = ref.bucket_key
        try:
            resp = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")
            data = resp["Body"].read()
        except S3_ERRORS as e:
            raise s3_error(e, ref.uri) from None
    else:
        fds = _proc()["fds"]
        fd = fds.get(ref.uri)
        if fd is None:
            try:
                fd = fds[ref.uri] = os.open(ref.uri, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{ref.uri}: cannot open ({e.strerror}); check the file") from None
        data = os.pread(fd, size, offset)
    if len(data) != size:
        raise DataError(
            f"{ref.uri}: short read at byte {offset} ({len(data)} of {size}); the file "
            "changed or is truncated, delete the index cache and retry"
        )
    return data


@contextmanager
def open_h5(ref: FileRef, block_size: int = INDEX_BLOCK_SIZE) -> Iterator[h5py.File]:
    """An h5py file for one-off reads (the index build); closed on exit. S3 goes through s3fs
    with a block cache."""
    with _open_raw(ref, block_size) as raw:
        try:
            f = h5py.File(raw, "r")
        except OSError as e:
            raise DataError(f"{ref.uri}: not a readable HDF5 file ({e}); check the file") from None
        try:
            yield f
        finally:
            f.close()


@contextmanager
def _open_raw(ref: FileRef, block_size: int):
    if not ref.is_s3:
        yield ref.uri
        return
    fobj = _s3_open(ref, block_size)
    try:
        yield fobj
    finally:
        fobj.close()


def _s3_open(ref: FileRef, block_size: int):
    """A read-only s3fs file with a block cache: h5py's many small reads become few larger GETs."""
    bucket, key = ref.bucket_key
    try:
        return s3_filesystem().open(f"{bucket}/{key}", "rb", cache_type="blockcache", block_size=block_size)
    except S3_ERRORS as e:
        raise s3_error(e, ref.uri) from None


def read_failure(err: Exception, ref: FileRef, what: str) -> DataError:
    """The one-line DataError for a failed read of ``what`` in ``ref``: the S3 code and next step
    for an object, the OS error for a local file."""
    if ref.is_s3:
        return s3_error(err, ref.uri)
    return DataError(f"{ref.uri}: cannot read {what} ({err}); check the file")


def cached_h5(ref: FileRef) -> h5py.File:
    """A per-process open h5py file for repeated reads (the chunked/compressed fallback)."""
    handles = _proc()["h5"]
    f = handles.get(ref.uri)
    if f is None:
        f = h5py.File(_s3_open(ref, H5_BLOCK_SIZE) if ref.is_s3 else ref.uri, "r")
        handles[ref.uri] = f
    return f


def thread_pool(max_workers: int):
    """This process's pool for concurrent ranged GETs."""
    from concurrent.futures import ThreadPoolExecutor

    st = _proc()
    with _lock:
        if st.get("pool_size") != max_workers:
            replaced = st.get("pool")
            st["pool"] = ThreadPoolExecutor(max_workers, thread_name_prefix="s3-get")
            st["pool_size"] = max_workers
            if replaced is not None:
                replaced.shutdown(wait=False)  # its queued GETs still finish; no new ones go to it
    return st["pool"]


def reset_clients() -> None:
    """Forget this process's clients and handles (after the environment changed: tests, new
    credentials). Open h5py files and descriptors are closed."""
    aws.reset_clients()
    st = _proc()
    with _lock:
        for f in st.get("h5", {}).values():
            f.close()
        for fd in st.get("fds", {}).values():
            os.close(fd)
        _state.clear()
