"""A reader and a piece the prefetcher is fetching right now (ml.data.partial): it waits while
bytes keep arriving in the piece, however slow S3 is, so the bytes leave S3 once; it fetches its
range itself when the piece stalls or the fetching process dies, so it never hangs.

The prefetcher runs in a real (forked) process, as in training: the DataLoader workers and DDP
ranks that read share the cache files with it but not its memory. S3 is moto's server behind the
counting proxy, slowed (``rate_bps``) or stuck mid-body (``stall_next``) as a loaded link is.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

from ml.data import cache, partial, storage
from ml.data.loader import open_source
from ml.data.reader import read_trials
from tests.ml.cachekit import BUCKET, s3_cfg, wait_until

# No S3 client or cache state carried over from another test.
pytestmark = pytest.mark.usefixtures("fresh_clients")


def _fetch(ref, root: str) -> None:
    cache.DataCache(root).fetch(ref)


@pytest.fixture
def one_file(synthetic_data, s3_proxy, aws_env, tmp_path):
    """A train file on S3, indexed; its last trial (near the end of the file); an empty cache;
    and a way to start the prefetcher's download of the file in another process."""
    session = "t15.2023.08.13"
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(synthetic_data / session / "data_train.hdf5"), BUCKET, f"ds/{session}/data_train.hdf5")
    one_session = dict(cache_dir=None, sessions=[session], dataset_probability_val=[0])
    src = open_source(s3_cfg(tmp_path, **one_session), say=lambda _: None)
    f = src.train_files[0]
    ref, index = src.refs[f], src.indices[f]
    trial = int(np.argmax(index.offsets))
    data_cache = cache.DataCache(str(tmp_path / "cache"))
    local = storage.FileRef(str(synthetic_data / ref.uri.split("/ds/")[1]), ref.size, "local")
    want = read_trials([local], [index], [(0, trial)], 1)[0]
    children: list[multiprocessing.Process] = []

    def start_fetch() -> multiprocessing.Process:
        child = multiprocessing.get_context("fork").Process(target=_fetch, args=(ref, data_cache.root))
        child.start()
        children.append(child)
        return child

    class File:
        pass

    one = File()
    one.src, one.f, one.ref, one.index, one.trial, one.want = src, f, ref, index, trial, want
    one.cache, one.copy, one.start_fetch = data_cache, data_cache.path(ref), start_fetch
    one.local_path = local.uri
    one.span = (int(index.offsets[trial]), int(index.nbytes[trial]))
    yield one
    s3_proxy.release()
    for child in children:
        if child.is_alive():
            child.kill()
        child.join(10)


def arrived(copy: Path) -> int:
    return sum(e - s for s, e in partial.written(copy))


def test_a_slow_piece_that_keeps_arriving_is_waited_for_not_fetched_twice(one_file, s3_proxy, monkeypatch):
    monkeypatch.setattr(partial, "STALL_S", 2.0)
    s3_proxy.rate_bps = 1_000_000  # ~4.5 s for the file: a 1 MiB chunk about every second
    s3_proxy.reset()
    fetcher = one_file.start_fetch()
    wait_until(lambda: partial.written(one_file.copy, partial.claims_path))  # its GET is under way
    t = time.monotonic()
    got = read_trials(
        one_file.src.refs, one_file.src.indices, [(one_file.f, one_file.trial)], 1, one_file.cache
    )
    waited = time.monotonic() - t
    fetcher.join(60)
    assert fetcher.exitcode == 0
    assert np.array_equal(got[0], one_file.want)
    # The reader waited longer than the stall bound, because the piece kept growing, and sent no
    # GET of its own: the prefetcher's one GET is all that reached S3.
    assert waited > partial.STALL_S
    assert s3_proxy.gets == 1 and s3_proxy.bytes_out == one_file.ref.size
    assert one_file.cache.ready(one_file.ref)


def test_a_stalled_piece_is_fetched_by_the_reader_after_the_stall_bound(one_file, s3_proxy, monkeypatch):
    monkeypatch.setattr(partial, "STALL_S", 1.0)
    s3_proxy.reset()
    s3_proxy.stall_next(after=partial.CHUNK)  # the prefetcher's GET: 1 MiB, then nothing, held open
    fetcher = one_file.start_fetch()
    wait_until(lambda: arrived(one_file.copy) == partial.CHUNK)
    t = time.monotonic()
    got = read_trials(
        one_file.src.refs, one_file.src.indices, [(one_file.f, one_file.trial)], 1, one_file.cache
    )
    waited = time.monotonic() - t
    assert np.array_equal(got[0], one_file.want)
    assert partial.STALL_S <= waited < 15
    assert fetcher.is_alive()  # its GET is still stuck: the reader did not wait for it to give up
    assert s3_proxy.gets == 2 and s3_proxy.ranged_gets == 2  # the stuck one and the reader's own
    # The stuck connection ends at last: the prefetch fails and drops its claims.
    s3_proxy.release()
    fetcher.join(60)
    assert fetcher.exitcode != 0 and not partial.written(one_file.copy, partial.claims_path)


def test_a_killed_fetcher_is_not_waited_for(one_file, s3_proxy):
    s3_proxy.rate_bps = 500_000  # ~9 s for the file: time to kill the fetcher mid-piece
    fetcher = one_file.start_fetch()
    wait_until(lambda: arrived(one_file.copy) >= partial.CHUNK)
    result: dict = {}
    reader = threading.Thread(
        target=lambda: result.update(data=partial.read(one_file.copy, *one_file.span, stall_s=300))
    )
    reader.start()
    before = arrived(one_file.copy)
    wait_until(lambda: arrived(one_file.copy) > before)
    assert reader.is_alive()  # the piece grows: the reader waits for it
    os.kill(fetcher.pid, signal.SIGKILL)  # no handler runs: its claims stay in the file
    fetcher.join(10)
    t = time.monotonic()
    reader.join(30)
    assert not reader.is_alive() and result["data"] is None  # the caller streams it
    assert time.monotonic() - t < 10  # at once, not after the 300 s stall bound: its lock died with it
    assert partial.written(one_file.copy, partial.claims_path)  # the dead process's claims, still there

    # The next prefetch resumes from what the dead one wrote, and the copy is whole.
    s3_proxy.rate_bps = None
    s3_proxy.reset()
    path, fetched = one_file.cache.fetch(one_file.ref)
    assert fetched < one_file.ref.size and s3_proxy.bytes_out == fetched
    assert Path(path).read_bytes() == Path(one_file.local_path).read_bytes()
    got = read_trials(
        one_file.src.refs, one_file.src.indices, [(one_file.f, one_file.trial)], 1, one_file.cache
    )
    assert np.array_equal(got[0], one_file.want)


def test_a_claimed_piece_is_awaited_while_it_grows_and_its_fetcher_holds_the_lock(tmp_path):
    """The same rules on hand-written files: in and claimed pieces, progress, the lock."""
    copy = tmp_path / "f.hdf5.etag-100"
    partial.start(copy, 100)
    assert partial.read(copy, 70, 10) is None  # neither in nor claimed: the caller streams it
    lock = os.open(partial.lock_path(copy), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as the prefetcher holds it while it fetches
    partial._log(copy, 0, 64, partial.claims_path)  # as fill() does before its GET

    def arrives() -> None:  # 8 bytes every 0.15 s: slower in all than the stall bound
        with open(partial.partial_path(copy), "r+b") as f:
            for k in range(0, 64, 8):
                time.sleep(0.15)
                f.seek(k)
                f.write(bytes(range(k, k + 8)))
                f.flush()
                partial._log(copy, k, 8)

    threading.Thread(target=arrives).start()
    t = time.monotonic()
    assert partial.read(copy, 40, 24, stall_s=0.6) == bytes(range(40, 64))
    assert time.monotonic() - t > 0.6
    partial._log(copy, 64, 36, partial.claims_path)
    t = time.monotonic()
    assert partial.read(copy, 70, 10, stall_s=0.3) is None  # claimed, but nothing arrives: stalled
    assert time.monotonic() - t >= 0.3
    os.close(lock)  # the fetcher is gone
    t = time.monotonic()
    assert partial.read(copy, 70, 10, stall_s=60) is None and time.monotonic() - t < 5


def test_a_trial_training_is_streaming_when_the_prefetch_reaches_it_is_not_fetched_twice(one_file, s3_proxy):
    """The other order: training's GET of a trial is under way when the prefetcher starts the
    piece around it. The piece leaves the trial to that GET and waits for it to land."""
    one_file.cache.open_partial(one_file.ref)  # the prefetch has begun, not yet on this file
    s3_proxy.latency_s = 1.0  # every GET takes a second: the two overlap
    s3_proxy.reset()
    got: dict = {}
    reader = threading.Thread(
        target=lambda: got.update(
            x=read_trials(
                one_file.src.refs, one_file.src.indices, [(one_file.f, one_file.trial)], 1, one_file.cache
            )[0]
        )
    )
    reader.start()
    wait_until(lambda: partial.written(one_file.copy, partial.streams_path))  # its GET is under way
    fetcher = one_file.start_fetch()
    fetcher.join(60)
    reader.join(60)
    assert fetcher.exitcode == 0 and np.array_equal(got["x"], one_file.want)
    # The trial's bytes came once, with the training GET; the prefetch fetched the rest around it.
    assert s3_proxy.bytes_out == one_file.ref.size
    assert Path(one_file.cache.ready(one_file.ref)).read_bytes() == Path(one_file.local_path).read_bytes()


def _announce_and_die(ref, root: str, offset: int, size: int) -> None:
    cache.DataCache(root).streaming(ref, offset, size)
    os._exit(1)  # a reader killed before its GET came back: nothing will land


def test_a_stream_that_never_lands_is_fetched_by_the_prefetch_after_the_stall_bound(
    one_file, s3_proxy, monkeypatch
):
    monkeypatch.setattr(partial, "STALL_S", 1.0)
    one_file.cache.open_partial(one_file.ref)
    reader = multiprocessing.get_context("fork").Process(
        target=_announce_and_die, args=(one_file.ref, one_file.cache.root, *one_file.span)
    )
    reader.start()
    reader.join(30)
    assert partial.written(one_file.copy, partial.streams_path) == [(one_file.span[0], sum(one_file.span))]
    s3_proxy.reset()
    t = time.monotonic()
    path, fetched = one_file.cache.fetch(one_file.ref)
    assert partial.STALL_S <= time.monotonic() - t < 15
    assert fetched == one_file.ref.size == s3_proxy.bytes_out
    assert Path(path).read_bytes() == Path(one_file.local_path).read_bytes()


def test_a_whole_run_reads_each_byte_about_once(synthetic_data, s3_proxy, aws_env, tmp_path):
    """Training streams from its first batch while the prefetch copies the files: the partial
    copies are open before the loader is handed over, so whatever training streams is kept, and
    over the run each byte leaves S3 about once (the goal: at most 1.05x the files)."""
    from ml.data import build_train_loader
    from tests.ml.cachekit import upload

    upload(aws_env, synthetic_data)
    build_train_loader(s3_cfg(tmp_path, cache_dir=None))  # indexes cached: the prefetch copies
    s3_proxy.latency_s = 0.2  # training's first reads overlap the prefetch
    s3_proxy.reset()
    loader = build_train_loader(s3_cfg(tmp_path, num_dataloader_workers=2), say=lambda _: None)
    data_cache, refs = loader.prefetcher.cache, loader.prefetcher.refs
    # Every file has its copy open when the loader is handed over: partial, or already whole (a
    # loaded machine can take longer than a file's fetch to return the loader).
    assert all(
        partial.partial_path(data_cache.path(r)).exists() or data_cache.ready(r) is not None for r in refs
    )
    batches = list(loader)
    assert loader.prefetcher.join(60) and loader.prefetcher.fetched_files == len(refs)
    run_bytes = sum(r.size for r in refs)
    assert s3_proxy.bytes_out <= 1.05 * run_bytes + 100_000  # + the LIST
    assert len(batches) == 4


def test_a_range_straddling_a_claimed_piece_fetches_only_its_unclaimed_part(tmp_path):
    """A trial across the end of a piece in flight and into one nobody has started: the reader
    GETs the part nobody is fetching (announced, then written in) and waits for the rest."""
    copy = tmp_path / "f.hdf5.etag-100"
    partial.start(copy, 100)
    lock = os.open(partial.lock_path(copy), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    partial._log(copy, 0, 64, partial.claims_path)
    asked: list[tuple[int, int]] = []

    def get(offset: int, length: int) -> bytes:  # the reader's ranged GET
        asked.append((offset, length))
        return bytes(range(offset, offset + length))

    def arrives() -> None:
        wait_until(lambda: asked)
        with open(partial.partial_path(copy), "r+b") as f:
            f.write(bytes(range(64)))
        partial._log(copy, 0, 64)

    threading.Thread(target=arrives).start()
    assert partial.read(copy, 40, 40, stall_s=30, fetch=get) == bytes(range(40, 80))
    assert asked == [(64, 16)]
    assert partial.written(copy, partial.streams_path) == [(64, 80)]
    os.close(lock)


def test_a_range_another_reader_is_streaming_is_awaited_not_fetched_again(tmp_path):
    """Two readers (DataLoader workers) want the same trial at once: the second waits for the
    first one's GET to land, and streams it itself only if it never does."""
    copy = tmp_path / "f.hdf5.etag-100"
    partial.start(copy, 100)
    partial.streaming(copy, 10, 20)  # the first reader's GET is under way
    asked: list[tuple[int, int]] = []

    def get(offset: int, length: int) -> bytes:
        asked.append((offset, length))
        return bytes(range(offset, offset + length))

    def lands() -> None:
        time.sleep(0.3)
        partial.record(copy, 10, bytes(range(10, 30)))

    threading.Thread(target=lands).start()
    assert partial.read(copy, 12, 8, stall_s=30, fetch=get) == bytes(range(12, 20)) and asked == []
    partial.streaming(copy, 40, 20)  # a reader that died before its GET came back
    t = time.monotonic()
    assert partial.read(copy, 45, 5, stall_s=0.5, fetch=get) is None  # the caller streams it
    assert 0.5 <= time.monotonic() - t < 10 and asked == []


def test_a_trial_drawn_twice_in_a_batch_is_read_once(one_file, s3_proxy):
    s3_proxy.reset()
    f, t = one_file.f, one_file.trial
    other = (t + 1) % len(one_file.index.offsets)
    got = read_trials(one_file.src.refs, one_file.src.indices, [(f, t), (f, other), (f, t)], 4)
    assert s3_proxy.ranged_gets == 2
    assert np.array_equal(got[0], one_file.want) and np.array_equal(got[2], one_file.want)
    assert got[0] is not got[2]
