"""A cached file while it is being filled: ``<copy>.partial`` (sparse, the object's size) and
``<copy>.ranges``, an append-only log of the byte ranges already written into it.

Two writers fill it, so no byte is fetched from S3 twice:

- the prefetcher (holding the file's lock) fetches the gaps, in ranged GETs of at most
  s3parts.PART_SIZE, several at once;
- a training process that streams a trial from S3 before the file is complete writes the trial's
  bytes into the partial file too (``record``), and the prefetcher then skips that range.

And any process reads a range that is already in (``read``) instead of asking S3 again, or waits
a little for one the prefetcher has claimed (``.claims``) and is fetching right now.

Each range is written first and logged after, so a logged range is always whole. Writers of
trials hold the ``.fill`` lock shared; the prefetcher takes it exclusive to check the ETag and
rename the partial file into place, so nothing writes into a sealed copy. A partial file left by a
crash is resumed from its log; the ETag check at the end catches anything wrong.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from common import s3parts

_RECORD = struct.Struct("<qq")  # (offset, length)


def partial_path(copy: Path) -> Path:
    return copy.with_name(copy.name + ".partial")


def ranges_path(copy: Path) -> Path:
    return copy.with_name(copy.name + ".ranges")


def claims_path(copy: Path) -> Path:
    """The pieces the prefetcher is fetching right now (logged before each GET)."""
    return copy.with_name(copy.name + ".claims")


# How long a reader waits for a piece the prefetcher is already fetching, rather than fetching the
# same bytes again. A 16 MiB piece takes well under a second at instance bandwidth.
WAIT_S = 10.0


@contextmanager
def fill_lock(copy: Path, exclusive: bool):
    fd = os.open(copy.with_name(copy.name + ".fill"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def written(copy: Path, log: Callable[[Path], Path] = ranges_path) -> list[tuple[int, int]]:
    """The merged (start, end) ranges logged for the partial file (or claimed, with
    ``log=claims_path``); [] when there is none."""
    try:
        raw = log(copy).read_bytes()
    except FileNotFoundError:
        return []
    spans = sorted(
        (off, off + n) for off, n in _RECORD.iter_unpack(raw[: len(raw) - len(raw) % _RECORD.size])
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def covered(spans: list[tuple[int, int]], offset: int, size: int) -> bool:
    return any(start <= offset and offset + size <= end for start, end in spans)


def gaps(spans: list[tuple[int, int]], size: int, chunk: int, begin: int = 0) -> list[tuple[int, int]]:
    """(offset, length) pieces of at most ``chunk`` bytes covering what ``spans`` lack of
    [begin, size)."""
    out, pos = [], begin
    for start, end in [*spans, (size, size)]:
        while pos < min(start, size):
            n = min(chunk, start - pos)
            out.append((pos, n))
            pos += n
        pos = max(pos, end)
    return out


def read(copy: Path, offset: int, size: int, wait_s: float = WAIT_S) -> bytes | None:
    """The range from the partial file if it is already in, or arrives within ``wait_s`` because
    the prefetcher is fetching it; else None (the caller streams it)."""
    if not covered(written(copy), offset, size):
        if not covered(written(copy, claims_path), offset, size):
            return None
        deadline = time.monotonic() + wait_s
        while not covered(written(copy), offset, size):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
    try:
        fd = os.open(partial_path(copy), os.O_RDONLY)
    except FileNotFoundError:
        return None  # renamed into place (or dropped) meanwhile: the caller asks again
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    return data if len(data) == size else None


def record(copy: Path, offset: int, data: bytes) -> None:
    """Write a range fetched by a training process into the partial file, if one is being filled.
    Best effort: a full disk or a file renamed meanwhile only means the prefetcher fetches it."""
    partial = partial_path(copy)
    if not partial.exists():
        return
    try:
        with fill_lock(copy, exclusive=False):
            fd = os.open(partial, os.O_WRONLY)  # after the lock: never into a sealed copy
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            _log(copy, offset, len(data))
    except OSError:
        pass


def _log(copy: Path, offset: int, length: int, log: Callable[[Path], Path] = ranges_path) -> None:
    fd = os.open(log(copy), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, _RECORD.pack(offset, length))  # 16 bytes with O_APPEND: one atomic append
    finally:
        os.close(fd)


def start(copy: Path, size: int) -> None:
    """Create the sparse partial file (or keep a crash's leftover of the right size, to resume it)."""
    partial = partial_path(copy)
    claims_path(copy).write_bytes(b"")  # whoever claimed pieces before is gone: we hold the lock
    if partial.exists() and partial.stat().st_size == size and ranges_path(copy).exists():
        return
    with open(partial, "wb") as f:
        f.truncate(size)
    ranges_path(copy).write_bytes(b"")


def drop(copy: Path) -> None:
    with fill_lock(copy, exclusive=True):
        for path in (partial_path(copy), ranges_path(copy), claims_path(copy)):
            path.unlink(missing_ok=True)


def fill(
    copy: Path,
    size: int,
    get_range: Callable[[int, int], bytes],
    on_bytes: Callable[[int], None] | None = None,
    concurrency: int = s3parts.CONCURRENCY,
) -> int:
    """Fetch every gap of the partial file with ``get_range(offset, length)``; the bytes fetched."""
    fd = os.open(partial_path(copy), os.O_WRONLY)

    def one(piece: tuple[int, int]) -> int:
        # Only what training has not streamed into the piece meanwhile (often all of it).
        begin, end = piece[0], piece[0] + piece[1]
        fetched = 0
        for offset, length in gaps(written(copy), end, end - begin, begin):
            _log(copy, offset, length, claims_path)  # readers wait for it instead of fetching it too
            data = get_range(offset, length)
            if len(data) != length:
                raise OSError(f"short read at byte {offset}: {len(data)} of {length}")
            os.pwrite(fd, data, offset)
            _log(copy, offset, length)
            if on_bytes:
                on_bytes(length)
            fetched += length
        return fetched

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="prefetch") as pool:
            return sum(pool.map(one, gaps(written(copy), size, s3parts.PART_SIZE)))
    except BaseException:
        claims_path(copy).write_bytes(b"")  # nobody is fetching them now: readers stream again
        raise
    finally:
        os.close(fd)
