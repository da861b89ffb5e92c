"""The dataset cache and its background prefetch, against moto's server behind the counting proxy:
each file leaves S3 once, a copy that does not match its ETag is never read, processes share one
download, a full disk and S3 throttling leave training streaming, and what was read is counted."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from common import aws
from ml.data import build_train_loader, cache, prefetch, storage
from ml.data.loader import open_source
from tests.ml.cachekit import BUCKET, make_cfg, s3_cfg, upload, wait_until
from tests.peers.trainkit import distinct_reads, same_batch

# No S3 client or cache state carried over from another test.
pytestmark = pytest.mark.usefixtures("fresh_clients")


def run_files(cfg) -> list:
    src = open_source(cfg, say=lambda _: None)
    return src.refs, src.cache


def test_prefetch_fills_cache_then_reads_are_local(synthetic_data, s3_proxy, aws_env, tmp_path):
    upload(aws_env, synthetic_data)
    cfg = s3_cfg(tmp_path)
    lines: list[str] = []
    loader = build_train_loader(cfg, say=lines.append)
    assert loader.prefetcher.join(60) and not loader.prefetcher.failed
    refs, data_cache = run_files(cfg)
    run_bytes = sum(r.size for r in refs)
    # The first open had no index anywhere: it fetched the files whole (parallel ranged GETs) and
    # indexed the local copies, so the prefetch had nothing left to do. Every byte came once.
    assert all(data_cache.ready(r) for r in refs)
    assert run_bytes <= s3_proxy.bytes_out <= 1.05 * run_bytes + 100_000

    local = list(build_train_loader(make_cfg(synthetic_data, tmp_path / "local-index")))
    # A fresh index cache and a fresh process state: the indexes come from the local copies and
    # the batches from pread. One LIST is all that reaches S3.
    storage.reset_clients()
    cache.forget()
    s3_proxy.reset()
    again = list(build_train_loader(s3_cfg(tmp_path, index_cache_dir=str(tmp_path / "index2"))))
    assert dict(s3_proxy.counts) == {"GET": 1} and s3_proxy.ranged_gets == 0
    assert all(same_batch(a, b) for a, b in zip(again, local, strict=True))


def test_streams_until_a_file_is_complete(synthetic_data, s3_proxy, aws_env, tmp_path):
    """With the indexes already cached, training starts at once on ranged GETs while the
    prefetch copies files in the order the batches first need them."""
    upload(aws_env, synthetic_data)
    build_train_loader(s3_cfg(tmp_path, cache_dir=None))  # indexes cached, no data cache
    cfg = s3_cfg(tmp_path)
    loader = build_train_loader(cfg, say=lambda _: None)
    batches = list(loader)
    assert loader.prefetcher.join(60)
    assert loader.prefetcher.fetched_files == len(run_files(cfg)[0])
    local = list(build_train_loader(make_cfg(synthetic_data, tmp_path / "local-index")))
    assert all(same_batch(a, b) for a, b in zip(batches, local, strict=True))


def test_first_use_order():
    plans = [[(3, 0), (1, 5)], [(1, 2), (0, 1)], [(2, 0)]]
    assert prefetch.first_use_order([0, 1, 2, 3], plans, extra=[4, 5]) == [3, 1, 0, 2, 4, 5]


@pytest.mark.parametrize("damage", ["edited", "truncated"])
def test_copy_not_matching_its_etag_is_discarded_and_fetched_again(
    synthetic_data, s3_proxy, aws_env, tmp_path, damage
):
    upload(aws_env, synthetic_data)
    cfg = s3_cfg(tmp_path)
    build_train_loader(cfg).prefetcher.join(60)
    refs, data_cache = run_files(cfg)
    victim = refs[0]
    path = Path(data_cache.ready(victim))
    with open(path, "r+b") as f:
        if damage == "edited":
            f.seek(victim.size // 2)
            f.write(b"\xff" * 4096)  # same size, other bytes
        else:
            f.truncate(victim.size // 2)
    # A left-over temporary file of a crashed download is not a copy either.
    (path.parent / f".{path.name}.crash.tmp").write_bytes(b"partial")
    cache.forget()
    assert data_cache.ready(victim) is None  # never read: its trials stream from S3 again

    s3_proxy.reset()
    local_path, fetched = data_cache.fetch(victim)
    assert fetched == victim.size and s3_proxy.bytes_out >= victim.size
    assert storage_bytes(local_path) == storage_bytes(synthetic_data / victim.uri.split("/ds/")[1])
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))


def storage_bytes(p) -> bytes:
    return Path(p).read_bytes()


def _fetch_in_child(ref, root: str, out) -> None:
    path, fetched = cache.DataCache(root).fetch(ref)
    out.put(fetched)


def test_processes_share_one_download(synthetic_data, s3_proxy, aws_env, tmp_path):
    """Four processes (DataLoader workers, DDP ranks) want the same file at once: one downloads,
    the others wait on its lock and use the copy."""
    upload(aws_env, synthetic_data)
    s3_proxy.latency_s = 0.05  # a download long enough for the others to queue behind it
    refs, _ = run_files(s3_cfg(tmp_path, cache_dir=None))
    ref = max(refs, key=lambda r: r.size)
    root = str(tmp_path / "shared-cache")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    s3_proxy.reset()
    procs = [ctx.Process(target=_fetch_in_child, args=(ref, root, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    fetched = sorted(out.get(timeout=5) for _ in procs)
    assert fetched == [0, 0, 0, ref.size]
    assert ref.size <= s3_proxy.bytes_out < ref.size + 10_000


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB filesystem: a tmpfs when we may mount one (root), else a file-size limit (EFBIG)
    for this process, which the cache treats like a full disk."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        == 0
    )
    if mounted:
        yield mount, "tmpfs"
        subprocess.run(["umount", "-l", str(mount)], check=False)
        return
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, old[1]))
    try:
        yield mount, "rlimit"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_turns_the_cache_off_and_training_streams(
    synthetic_data, s3_proxy, aws_env, tmp_path, small_disk
):
    upload(aws_env, synthetic_data)
    root, kind = small_disk
    build_train_loader(s3_cfg(tmp_path, cache_dir=None))  # indexes cached: the prefetch does the copying
    s3_proxy.latency_s = 0.3  # slow enough to fill the disk while the prefetch runs
    cfg = s3_cfg(tmp_path, cache_dir=str(root / "cache"))
    lines: list[str] = []
    loader = build_train_loader(cfg, say=lines.append)
    refs, data_cache = run_files(cfg)
    if kind == "tmpfs":
        # Something else fills the disk once the first file is in.
        wait_until(lambda: any(data_cache.ready(r) for r in refs))
        with open(root / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 1_000_000)
                    f.flush()
            except OSError:
                pass
    batches = list(loader)
    assert loader.prefetcher.join(60) and loader.prefetcher.disk_full
    warnings = [line for line in lines if "disk full" in line]
    assert len(warnings) == 1 and "streaming from S3" in warnings[0]
    assert not [p for p in (root / "cache").rglob("*") if p.suffix in (".tmp", ".partial")]  # no half copy
    local = list(build_train_loader(make_cfg(synthetic_data, tmp_path / "local-index")))
    assert all(same_batch(a, b) for a, b in zip(batches, local, strict=True))


@pytest.fixture
def one_attempt(monkeypatch):
    """botocore's own retries off (they would back off for seconds per fault), and a short backoff
    for the prefetcher's, so the test exercises the prefetcher's handling in milliseconds."""
    monkeypatch.setattr(aws, "ATTEMPTS", 1)
    monkeypatch.setattr(prefetch, "BACKOFF_S", 0.01)
    aws.reset_clients()
    yield
    aws.reset_clients()


def test_throttling_backs_off_and_the_prefetch_completes(
    synthetic_data, s3_proxy, aws_env, tmp_path, one_attempt
):
    upload(aws_env, synthetic_data)
    build_train_loader(s3_cfg(tmp_path, cache_dir=None))
    cfg = s3_cfg(tmp_path)
    s3_proxy.reset()
    s3_proxy.fail_next(5, 503, "SlowDown", method="GET", path_part=".hdf5")
    lines: list[str] = []
    loader = build_train_loader(cfg, say=lines.append)
    assert loader.prefetcher.join(60)
    assert s3_proxy.counts["GET 503"] == 5
    refs, data_cache = run_files(cfg)
    assert all(data_cache.ready(r) for r in refs) and not loader.prefetcher.failed
    assert not [line for line in lines if "warning" in line]


def test_throttled_past_the_last_attempt_leaves_the_file_on_s3(
    synthetic_data, s3_proxy, aws_env, tmp_path, one_attempt
):
    upload(aws_env, synthetic_data)
    build_train_loader(s3_cfg(tmp_path, cache_dir=None))
    cfg = s3_cfg(tmp_path)
    s3_proxy.fail_next(prefetch.ATTEMPTS, 503, "SlowDown", method="GET", path_part=".hdf5")
    lines: list[str] = []
    loader = build_train_loader(cfg, say=lines.append)
    assert loader.prefetcher.join(60)
    assert len(loader.prefetcher.failed) == 1
    assert [line for line in lines if "SlowDown" in line and "stay on S3" in line]
    local = list(build_train_loader(make_cfg(synthetic_data, tmp_path / "local-index")))
    assert all(same_batch(a, b) for a, b in zip(list(loader), local, strict=True))


def test_does_not_fit_streams_and_says_so_once(synthetic_data, s3_proxy, aws_env, tmp_path):
    upload(aws_env, synthetic_data)
    build_train_loader(s3_cfg(tmp_path, cache_dir=None))
    lines: list[str] = []
    loader = build_train_loader(s3_cfg(tmp_path, cache_max_gb=0.001), say=lines.append)
    assert loader.prefetcher.join(60) and loader.prefetcher.fetched_files == 0
    assert len([line for line in lines if "streaming from S3" in line]) == 1
    assert not list((tmp_path / "data-cache").rglob("*.hdf5*"))


def _quiet_traffic(quiet_s: float = 1.0, bound_s: float = 30.0):
    """This process's S3 counters once they have not moved for ``quiet_s``."""
    deadline = time.monotonic() + bound_s
    last = storage.s3_traffic()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = storage.s3_traffic()
        if now == last:
            return now
        last = now
    raise AssertionError(f"S3 reads in this process did not stop within {bound_s} s: {last}")


def test_traffic_counts_workers_gets(synthetic_data, s3_proxy, aws_env, tmp_path, monkeypatch):
    """GETs and bytes from S3 are counted across forked DataLoader workers (shared counters)."""
    upload(aws_env, synthetic_data)
    cfg = s3_cfg(tmp_path, cache_dir=None, num_dataloader_workers=2)
    trials, features = distinct_reads(cfg)  # (a trial a batch draws twice is read once)
    # The counters are this process's and every process it forks: the window starts once nothing
    # in this one still reads (under a loaded full run, GETs finishing after the line above were
    # counted here and not by the proxy), with counters of its own, which this loader's workers
    # share and no process an earlier test forked here does (13 GETs too many, once, in CI).
    _quiet_traffic()
    monkeypatch.setattr(storage, "_TRAFFIC", multiprocessing.Array("q", 3))
    s3_proxy.reset()
    list(build_train_loader(cfg))
    after = storage.s3_traffic()
    assert after.gets == s3_proxy.gets - 1 == trials  # minus the LIST
    assert after.lists == 1
    assert after.bytes == features
    assert after.line().startswith(f"read from S3: {after.gets:,} GETs, ") and after.request_usd > 0


def test_default_dir_moves_to_the_nvme_store(tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    assert cache.resolve_dir(None) is None
    assert cache.resolve_dir("/data/x") == Path("/data/x")
    # Not a mount point: the home folder.
    assert (
        cache.resolve_dir(cache.DATA_CACHE_DEFAULT, str(nvme)) == Path("~/.cache/spotrun/data").expanduser()
    )
    # A mount point (what the DLAMI mounts at /opt/dlami/nvme): the cache goes there.
    assert cache.resolve_dir(cache.DATA_CACHE_DEFAULT, "/") == Path("/spotrun/data")


def test_training_from_s3_reports_what_it_read_and_fab_run_sums_it(s3_proxy, aws_env, tmp_path, capsys):
    """The trainer's end-of-run line carries GETs, GB and request cost; `fab run`'s summary adds
    them up over the attempts."""
    from ec2.journey import decide, history, report
    from ml.train import main
    from tests.peers.trainkit import DEMO, make_data, tiny

    data = make_data(tmp_path / "syn")
    upload(aws_env, data)
    run = tmp_path / "run"
    args = tiny(f"s3://{BUCKET}/ds", run, 3, f"dataset.index_cache_dir={tmp_path / 'idx'}")
    s3_proxy.reset()
    before = storage.s3_traffic()  # the counters are per process: a real run is one process
    assert main(["--config", DEMO, *args, f"dataset.cache_dir={tmp_path / 'cache'}"]) == 0
    out = capsys.readouterr().out
    assert "data cache: fetched 3 files" in out  # no stored index: fetched whole, indexed locally
    gets, gb, usd = decide.s3_read(out)
    # One GET per file (each is under one part), and the train and val loaders' LISTs.
    assert gets - before.gets == 3 == s3_proxy.gets - 2
    assert abs(gb - before.bytes / 1e9 - s3_proxy.bytes_out / 1e9) < 0.01 and usd > 0

    h = history.RunHistory("job")
    h.attempts = [
        history.Attempt(1, s3_gets=gets, s3_gb=gb, s3_request_usd=usd),
        history.Attempt(2, s3_gets=10),
    ]
    assert report.summary(h).splitlines()[-1] == (
        f"  data read from S3: {gets + 10:,} GETs, {gb:.2f} GB, ${usd:.6f} in requests"
    )


def test_trials_streamed_while_a_file_fills_are_not_fetched_again(
    synthetic_data, s3_proxy, aws_env, tmp_path
):
    """Before a file is complete, a streamed trial goes into its partial copy: the next read of it
    is local and the prefetch fetches only the gaps, so each byte leaves S3 once."""
    from ml.data import partial
    from ml.data.reader import read_trials

    upload(aws_env, synthetic_data)
    src = open_source(s3_cfg(tmp_path, cache_dir=None), say=lambda _: None)
    data_cache = cache.DataCache(str(tmp_path / "data-cache"))
    f = src.train_files[1]
    ref, index = src.refs[f], src.indices[f]
    copy = data_cache.path(ref)
    copy.parent.mkdir(parents=True)
    partial.start(copy, ref.size)  # the prefetcher has begun on this file
    wanted = [(f, 0), (f, 3), (f, 5)]
    s3_proxy.reset()
    first = read_trials(src.refs, src.indices, wanted, 4, data_cache)
    assert s3_proxy.ranged_gets == 3
    again = read_trials(src.refs, src.indices, wanted, 4, data_cache)
    assert s3_proxy.ranged_gets == 3 and all((a == b).all() for a, b in zip(first, again, strict=True))

    streamed = sum(int(index.nbytes[i]) for _, i in wanted)
    s3_proxy.reset()
    path, fetched = data_cache.fetch(ref)
    assert fetched == ref.size - streamed and s3_proxy.bytes_out == fetched
    assert Path(path).read_bytes() == (synthetic_data / ref.uri.split("/ds/")[1]).read_bytes()
    assert not partial.partial_path(copy).exists() and not partial.ranges_path(copy).exists()


def test_gaps_and_coverage():
    from ml.data import partial

    spans = [(0, 10), (30, 40)]
    assert partial.gaps(spans, 50, 8) == [(10, 8), (18, 8), (26, 4), (40, 8), (48, 2)]
    assert partial.gaps([], 5, 8) == [(0, 5)] and partial.gaps([(0, 5)], 5, 8) == []
    assert partial.gaps(spans, 36, 100, begin=5) == [(10, 20)]  # within one piece
    assert partial.covered(spans, 2, 8) and not partial.covered(spans, 8, 4)
