"""Background prefetch: copy the run's S3 files whole into the local cache while training streams.

Train files come first, in the order the batches will first touch them, then val files. Until a
file is complete its trials are read with ranged GETs (ml.data.reader); once it is sealed in the
cache, every process reads it with pread. Faults never fail the run:

- S3 throttling (SlowDown, 503) and dropped connections: botocore's standard retries first, then
  this thread backs off (exponentially, with jitter) and tries the file again, a few times, before
  leaving that file on S3.
- A full disk: one warning, the cache is off for the rest of the run, training streams on.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable

import botocore.exceptions

from common import aws
from ml.data.cache import DataCache, DiskFull
from ml.data.storage import FileRef

# S3's answers that mean "later": throttling and transient server faults.
RETRY_LATER = {
    "SlowDown",
    "ServiceUnavailable",
    "503",
    "500",
    "InternalError",
    "RequestTimeout",
    "Throttling",
}
ATTEMPTS = 6
BACKOFF_S = 2.0  # first wait; doubles per attempt, capped at BACKOFF_MAX_S, with full jitter
BACKOFF_MAX_S = 60.0


def first_use_order(
    train_files: list[int], plans: Iterable[list[tuple[int, int]]], extra: list[int]
) -> list[int]:
    """File ids in the order the plans first touch them, then the train files no plan touched,
    then ``extra`` (val files), each once."""
    order: list[int] = []
    seen: set[int] = set()
    wanted = set(train_files)

    def add(f: int) -> None:
        if f not in seen:
            seen.add(f)
            order.append(f)

    for plan in plans:
        for f, _ in plan:
            add(f)
        if wanted <= seen:
            break
    for f in [*train_files, *extra]:
        add(f)
    return order


def retry_later(err: Exception) -> bool:
    if isinstance(err, botocore.exceptions.ClientError):
        code = aws.error_code(err)
        status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in RETRY_LATER or status in ("500", "503")
    return isinstance(err, (botocore.exceptions.BotoCoreError, ConnectionError, TimeoutError))


class Prefetcher:
    """One background thread filling ``cache`` with ``refs`` in order. ``say`` prints a line."""

    def __init__(self, cache: DataCache, refs: list[FileRef], say: Callable[[str], None] = print):
        self.cache, self.refs, self.say = cache, refs, say
        self.fetched_files = 0
        self.fetched_bytes = 0
        self.failed: list[str] = []
        self.disk_full = False
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="data-prefetch", daemon=True)
        self._stop = threading.Event()

    def start(self) -> Prefetcher:
        """Check the room and open the partial copies now, before training's first reads, so every
        trial it streams is kept (ml.data.partial); then fetch in the background."""
        self._start = time.monotonic()
        self._todo = self._prepare()
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Ask the thread to stop after the file in flight (it is a daemon: exit never waits on it)."""
        self._stop.set()

    def _prepare(self) -> list[FileRef]:
        """The files to fetch, their partial copies open; [] when the cache cannot take them."""
        todo = [r for r in self.refs if self.cache.ready(r) is None]
        need = sum(r.size for r in todo)
        try:
            room = self.cache.budget_bytes()
        except OSError as e:
            self.say(f"warning: data cache {self.cache.root} unusable ({e.strerror}); streaming from S3")
            return []
        if need > room:
            self.say(
                f"data cache: the run's files need {need / 1e9:.2f} GB more but {self.cache.root} has "
                f"room for {room / 1e9:.2f} GB (dataset.cache_max_gb, 10% of the disk kept free); "
                "streaming from S3"
            )
            return []
        try:
            for ref in todo:
                self.cache.open_partial(ref)
        except OSError as e:
            self.say(f"warning: data cache {self.cache.root} unusable ({e}); streaming from S3")
            return []
        return todo

    def _run(self) -> None:
        for ref in self._todo:
            if self._stop.is_set() or not self._fetch(ref):
                break
        self.seconds = time.monotonic() - self._start
        if self.fetched_files or self.failed:
            left = f"; {len(self.failed)} left on S3" if self.failed else ""
            rate = self.fetched_bytes / 1e6 / self.seconds if self.seconds else 0.0
            self.say(
                f"data cache: prefetched {self.fetched_files} files, "
                f"{self.fetched_bytes / 1e9:.2f} GB from S3 in {self.seconds:.1f} s ({rate:.0f} MB/s) "
                f"into {self.cache.root}{left}"
            )

    def _fetch(self, ref: FileRef) -> bool:
        """One file, with backoff. False: stop prefetching (the disk is full)."""
        for attempt in range(ATTEMPTS):
            try:
                _, nbytes = self.cache.fetch(ref)
            except DiskFull as e:
                self.disk_full = True
                for other in self.refs:  # the cache is off: no partial copies left to grow
                    if self.cache.ready(other) is None:
                        self.cache.drop_partial(other)
                self.say(
                    f"warning: data cache disk full ({e.strerror}); cache off for this run, "
                    "streaming from S3 (free space or set dataset.cache_dir)"
                )
                return False
            except aws.AWS_FAILURES as e:
                if retry_later(e) and attempt + 1 < ATTEMPTS:
                    wait = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt))
                    if self._stop.wait(wait):
                        return False
                    continue
                self.failed.append(ref.uri)
                self.say(
                    f"warning: prefetching {aws.s3_failure(e, ref.uri, 'dataset.dataset_dir')}; "
                    "its trials stay on S3"
                )
                return True
            except OSError as e:  # the cache folder itself: unwritable, or a copy that fails its check
                self.failed.append(ref.uri)
                self.say(f"warning: data cache: {e}; cache off for this run, streaming from S3")
                return False
            if nbytes:
                self.fetched_files += 1
                self.fetched_bytes += nbytes
            return True
        return True
