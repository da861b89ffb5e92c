"""A cached file while it is being filled: ``<copy>.partial`` (sparse, the object's size) and
``<copy>.ranges``, an append-only log of the byte ranges already written into it.

Two writers fill it, so no byte is fetched from S3 twice:

- the prefetcher (holding the file's lock) fetches the gaps, in ranged GETs of at most
  s3parts.PART_SIZE, several at once;
- a training process that streams a trial from S3 before the file is complete writes the trial's
  bytes into the partial file too (``record``), and the prefetcher then skips that range.

Who fetches what is decided in one step under the ``.intent`` flock (``take``): a reader logs the
parts of its range that nobody has or is fetching in ``.streams``, the prefetcher the parts of its
piece in ``.claims``, so two processes never both decide to fetch the same bytes. A piece leaves
what training is streaming to training's GET, waits for it to land, and fetches it only if it does
not arrive within STALL_S (the reader failed or died); another reader wanting it waits for it too.

And any process reads a range that is already in (``read``) instead of asking S3 again, or waits
for one the prefetcher has claimed (``.claims``) and is fetching right now: a second GET for bytes
already in flight would only split the same bandwidth. The prefetcher writes and logs each piece
as it arrives, CHUNK bytes at a time, so a reader sees the piece grow. It waits as long as the piece
grows; it streams the range itself only when no byte has arrived in the piece for STALL_S, or the
prefetcher is gone (it holds the file's ``.lock`` flock while it fetches, and the kernel releases
that when the process dies, however it dies), so a reader never hangs on a dead or stuck fetch.

Each range is written first and logged after, so a logged range is always whole. Writers of
trials hold the ``.fill`` lock shared; the prefetcher takes it exclusive to check the ETag and
rename the partial file into place, so nothing writes into a sealed copy. A partial file left by a
crash is resumed from its log; the ETag check at the end catches anything wrong.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import s3parts
from ml.data.flocks import flocked

_RECORD = struct.Struct("<qq")  # (offset, length)


def partial_path(copy: Path) -> Path:
    return copy.with_name(copy.name + ".partial")


def ranges_path(copy: Path) -> Path:
    return copy.with_name(copy.name + ".ranges")


def claims_path(copy: Path) -> Path:
    """The pieces the prefetcher is fetching right now (logged before each GET)."""
    return copy.with_name(copy.name + ".claims")


def streams_path(copy: Path) -> Path:
    """The ranges training processes are streaming right now (logged before each GET)."""
    return copy.with_name(copy.name + ".streams")


def lock_path(copy: Path) -> Path:
    """The file's download lock: the prefetcher holds it (flock, exclusive) while it fetches."""
    return copy.with_name(copy.name + ".lock")


# The prefetcher writes and logs a piece in chunks of this size as they arrive: what a waiting
# reader sees as progress. 1 MiB: a 16 MiB piece logs 16 records of 16 bytes.
CHUNK = 1024 * 1024
# A reader waits for a claimed piece while bytes keep arriving in it; after this long without one
# (a stuck connection: botocore's own read timeout is 60 s) it fetches its range itself. At
# instance bandwidth a 1 MiB chunk takes milliseconds; on a loaded stand-in, about a second.
STALL_S = 20.0
POLL_S = 0.02


def download_lock(copy: Path):
    """Held (flock, exclusive) by the process downloading the file, while it does."""
    return flocked(lock_path(copy))


def fill_lock(copy: Path, exclusive: bool):
    return flocked(copy.with_name(copy.name + ".fill"), exclusive)


def _deciding(copy: Path):
    """Held (flock, exclusive, across processes) while a process looks at what is in or being
    fetched and logs what it will fetch itself, so two never both decide to fetch the same bytes."""
    return flocked(copy.with_name(copy.name + ".intent"))


def take(
    copy: Path, begin: int, end: int, chunk: int, log: Callable[[Path], Path], busy: bool = True
) -> list[tuple[int, int]]:
    """The parts of [begin, end) (at most ``chunk`` bytes each) that are not in and (``busy``)
    not being fetched by anyone, logged in ``log`` (claims_path: the prefetcher; streams_path: a
    reader) as this process's to fetch, in one step under the ``.intent`` lock."""
    with _deciding(copy):
        spans = written(copy)
        if busy:
            spans = merge(spans + written(copy, claims_path) + written(copy, streams_path))
        parts = gaps(spans, end, chunk, begin)
        for offset, length in parts:
            _log(copy, offset, length, log)
    return parts


def written(copy: Path, log: Callable[[Path], Path] = ranges_path) -> list[tuple[int, int]]:
    """The merged (start, end) ranges logged for the partial file (or claimed, with
    ``log=claims_path``); [] when there is none."""
    try:
        raw = log(copy).read_bytes()
    except FileNotFoundError:
        return []
    return merge(
        [(off, off + n) for off, n in _RECORD.iter_unpack(raw[: len(raw) - len(raw) % _RECORD.size])]
    )


def merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) spans, sorted and merged where they touch or overlap."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def inside(spans: list[tuple[int, int]], begin: int, end: int) -> int:
    """How many bytes of [begin, end) the (merged) spans hold."""
    return sum(max(0, min(e, end) - max(s, begin)) for s, e in spans)


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


def read(
    copy: Path,
    offset: int,
    size: int,
    stall_s: float | None = None,
    fetch: Callable[[int, int], bytes] | None = None,
) -> bytes | None:
    """The range from the partial file if it is already in, or once it arrives because the
    prefetcher is fetching it; None (the caller streams it) when it is neither in nor claimed, or
    its piece has stalled for ``stall_s`` (default STALL_S), or the prefetcher is gone.

    With ``fetch(offset, length)`` (a ranged GET), the parts of the range that are neither in nor
    claimed are fetched with it and written in first, the rest awaited: a trial that straddles a
    piece in flight and one not started costs only its missing part."""
    try:
        # Opened first: if the prefetcher completes the file and renames it meanwhile, this
        # descriptor still reads the same (now checked) bytes.
        fd = os.open(partial_path(copy), os.O_RDONLY)
    except FileNotFoundError:
        return None  # not being filled (or renamed into place meanwhile: the caller asks again)
    try:
        if fetch is not None and not _sealed(copy, fd):
            # What is neither in nor being fetched by the prefetch or another reader is ours.
            missing = take(copy, offset, offset + size, size, streams_path)
            for part_offset, length in missing:
                data = fetch(part_offset, length)
                if missing == [(offset, size)]:
                    record(copy, offset, data)
                    return data  # all of it came with this GET: nothing to wait for
                record(copy, part_offset, data)
        if not _arrived(copy, fd, offset, size, STALL_S if stall_s is None else stall_s):
            return None
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    return data if len(data) == size else None


def _arrived(copy: Path, fd: int, offset: int, size: int, stall_s: float) -> bool:
    """Wait for the range while what it lacks is being fetched (pieces the prefetcher claimed,
    ranges other readers are streaming) and bytes keep arriving: True once it is all in."""
    end = offset + size
    progress, since = -1, time.monotonic()
    while True:
        spans = written(copy)
        lacking = gaps(spans, end, size, offset)
        if not lacking or _sealed(copy, fd):
            return True
        claims = [(s, e) for s, e in written(copy, claims_path) if s < end and offset < e]
        streams = [(s, e) for s, e in written(copy, streams_path) if s < end and offset < e]
        awaited = merge(claims + streams)
        if not all(covered(awaited, o, n) for o, n in lacking):
            return False  # nobody is fetching it (or the fetch failed and dropped its claims)
        arrived = sum(inside(spans, s, e) for s, e in awaited)
        now = time.monotonic()
        if arrived != progress:
            progress, since = arrived, now
        elif now - since > stall_s:
            return False  # stalled: stream it rather than wait on a stuck connection
        on_prefetch = not all(covered(streams, o, n) for o, n in lacking)
        if on_prefetch and not fetcher_alive(copy):
            return _sealed(copy, fd) or covered(written(copy), offset, size)
        time.sleep(POLL_S)


def _await_streams(copy: Path, begin: int, end: int) -> None:
    """Wait while the ranges training is streaming into [begin, end) keep landing; return when
    all are in or none has landed for STALL_S (a reader that failed or died)."""
    progress, since = -1, time.monotonic()
    while gaps(spans := written(copy), end, end - begin, begin):
        arrived, now = inside(spans, begin, end), time.monotonic()
        if arrived != progress:
            progress, since = arrived, now
        elif now - since > STALL_S:
            return
        time.sleep(POLL_S)


def _sealed(copy: Path, fd: int) -> bool:
    """Whether the partial file open on ``fd`` has been checked and renamed into place."""
    try:
        a, b = os.stat(copy), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def fetcher_alive(copy: Path) -> bool:
    """Whether some process holds the file's download lock (so its claims are live). A shared,
    non-blocking try: taken means nobody holds it, and it is let go at once."""
    try:
        with flocked(lock_path(copy), exclusive=False, wait=False) as taken:
            return not taken
    except OSError:
        return False


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


def streaming(copy: Path, offset: int, length: int) -> None:
    """A training process is about to GET this range of a file being filled: the prefetcher leaves
    it to that GET (``record`` then writes it in). Best effort, like ``record``."""
    if not partial_path(copy).exists():
        return
    try:
        _log(copy, offset, length, streams_path)
    except OSError:
        pass


def _log(copy: Path, offset: int, length: int, log: Callable[[Path], Path] = ranges_path) -> None:
    fd = os.open(log(copy), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, _RECORD.pack(offset, length))  # 16 bytes with O_APPEND: one atomic append
    finally:
        os.close(fd)


def start(copy: Path, size: int, new_run: bool = False) -> None:
    """Create the sparse partial file (or keep a crash's leftover of the right size, to resume it).
    ``new_run``: the run's prefetch is beginning, so the streams logged before are a dead run's;
    later (the prefetch reaching the file) training may be streaming into it, and they are kept."""
    partial = partial_path(copy)
    claims_path(copy).write_bytes(b"")  # whoever claimed pieces before is gone: we hold the lock
    if partial.exists() and partial.stat().st_size == size and ranges_path(copy).exists():
        if new_run:
            streams_path(copy).write_bytes(b"")
        return
    with open(partial, "wb") as f:
        f.truncate(size)
    ranges_path(copy).write_bytes(b"")
    streams_path(copy).write_bytes(b"")


def drop(copy: Path) -> None:
    with fill_lock(copy, exclusive=True):
        for path in (partial_path(copy), ranges_path(copy), claims_path(copy), streams_path(copy)):
            path.unlink(missing_ok=True)


def fill(
    copy: Path,
    size: int,
    get_range: Callable[[int, int], Iterable[bytes]],
    on_bytes: Callable[[int], None] | None = None,
    concurrency: int = s3parts.CONCURRENCY,
) -> int:
    """Fetch every gap of the partial file with ``get_range(offset, length)`` (the range's bytes,
    in chunks as they arrive); the bytes fetched. The caller holds the file's lock."""
    fd = os.open(partial_path(copy), os.O_WRONLY)

    def get(parts: list[tuple[int, int]]) -> int:
        fetched = 0
        for offset, length in parts:
            pos = offset
            for data in get_range(offset, length):
                if pos + len(data) > offset + length:
                    raise OSError(f"long read at byte {offset}: more than {length} bytes")
                os.pwrite(fd, data, pos)
                _log(copy, pos, len(data))  # a waiting reader sees the piece grow
                pos += len(data)
                if on_bytes:
                    on_bytes(len(data))
            if pos != offset + length:
                raise OSError(f"short read at byte {offset}: {pos - offset} of {length}")
            fetched += length
        return fetched

    def one(piece: tuple[int, int]) -> int:
        # Only what training has not streamed into the piece, nor is streaming now (often all
        # of it), claimed first: readers wait for it instead of fetching it too.
        begin, end = piece[0], piece[0] + piece[1]
        fetched = get(take(copy, begin, end, end - begin, claims_path))
        if gaps(written(copy), end, end - begin, begin):
            _await_streams(copy, begin, end)
            # What training's GETs did not bring (a reader that failed or died): ours now.
            fetched += get(take(copy, begin, end, end - begin, claims_path, busy=False))
        return fetched

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="prefetch") as pool:
            return sum(pool.map(one, gaps(written(copy), size, s3parts.PART_SIZE)))
    except BaseException:
        claims_path(copy).write_bytes(b"")  # nobody is fetching them now: readers stream again
        raise
    finally:
        os.close(fd)
