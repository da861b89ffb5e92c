"""The trainer's two entry points: ``build_train_loader`` and ``build_val_loader``.

Both open the dataset up front (list the sessions, load or build every needed trial index, check
shapes), so a bad dataset fails before training starts with one DataError naming the file. The
loaders are torch DataLoaders whose items are whole batches (``batch_size=None``): the train
dataset maps a global step to its batch, the val dataset an ordinal to a val batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common import aws
from common.s3uri import is_s3
from ml.config import TrainConfig
from ml.data.batches import collate, train_plan, usable_trials, val_plans
from ml.data.cache import DataCache, DiskFull, resolve_dir
from ml.data.checks import check_finite, check_labels
from ml.data.index import TrialIndex, cache_path, load_index
from ml.data.prefetch import Prefetcher, first_use_order
from ml.data.reader import read_trials
from ml.data.storage import FileRef, list_sessions
from ml.errors import DataError, ToolkitError


@dataclass
class DataSource:
    """Plain, picklable data: what a batch needs to be read, and nothing that holds a connection."""

    refs: list[FileRef]
    indices: list[TrialIndex]
    train_files: list[int]  # per session: file id of its train file
    train_trials: list[np.ndarray]  # per session: usable trial numbers
    val_files: list[int | None]  # per session: file id of its val file, None when skipped
    val_trials: list[np.ndarray]
    file_day: list[int]  # per file: its session's index in cfg.dataset.sessions
    feature_subset: list[int] | None
    max_concurrency: int
    cache: DataCache | None = None  # S3 datasets: complete local copies, read instead of S3

    def batch(self, plan: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        feats = read_trials(self.refs, self.indices, plan, self.max_concurrency, self.cache)
        check_finite(feats, plan, self.indices)
        rows = [(self.indices[f], i, self.file_day[f]) for f, i in plan]
        return collate(feats, rows, self.feature_subset)


# The held-out split files a session may have beside data_train.hdf5.
SPLIT_FILES = {"val": "data_val.hdf5", "test": "data_test.hdf5"}


def open_source(
    cfg: TrainConfig, split: str = "val", with_train: bool = True, say: Callable[[str], None] = print
) -> DataSource:
    """The configured sessions' files, indexed: train (unless ``with_train`` is off: evaluation)
    and the held-out ``split`` (val: sessions whose dataset_probability_val is 0 are skipped, as
    the trainer's validation does; test: every session with a test file)."""
    ds = cfg.dataset
    if not ds.sessions:
        raise DataError("dataset.sessions is empty; list the session folders to train on")
    n_in = cfg.model.n_input_features
    if ds.feature_subset and not all(0 <= c < n_in for c in ds.feature_subset):
        raise DataError(f"dataset.feature_subset has channels outside 0..{n_in - 1}; fix the list")
    for d in ds.must_include_days or []:
        if not -len(ds.sessions) <= d < len(ds.sessions):
            raise DataError(f"dataset.must_include_days: {d} is not a session index; fix the list")
    found = list_sessions(ds.dataset_dir, ds.sessions)
    probs = ds.dataset_probability_val or [1.0] * len(ds.sessions)
    bad = ds.bad_trials_dict or {}
    cache = data_cache(cfg) if is_s3(ds.dataset_dir) else None
    src = DataSource([], [], [], [], [], [], [], ds.feature_subset, max(1, ds.s3_max_concurrency), cache)

    # Which files the run reads: per session its train file, and its held-out file unless skipped.
    held_out = SPLIT_FILES[split]
    wanted: list[tuple[int, str]] = []
    for day, session in enumerate(ds.sessions):
        if with_train:
            wanted.append((day, "data_train.hdf5"))
        if (split != "val" or probs[day] > 0) and held_out in found[session]:
            wanted.append((day, held_out))
    refs = [found[ds.sessions[day]][name] for day, name in wanted]
    indices = _load_indices(refs, ds.index_cache_dir, cache, say)
    m = cfg.model
    cut = max(0, ds.data_transforms.random_cut - 1)  # the longest random cut a train batch may get

    for (day, name), ref, index in zip(wanted, refs, indices, strict=True):
        if index.n_features != n_in:
            raise DataError(
                f"{ref.uri}: input_features has {index.n_features} features but "
                f"model.n_input_features is {n_in}; fix the config or the data"
            )
        src.refs.append(ref)
        src.indices.append(index)
        src.file_day.append(day)
        f = len(src.refs) - 1
        is_train = name == "data_train.hdf5"
        trials = usable_trials(index, bad.get(ds.sessions[day]))
        if name != SPLIT_FILES["test"]:  # the test split carries no labels to check
            check_labels(
                index,
                trials,
                n_classes=ds.n_classes,
                patch_size=m.patch_size,
                patch_stride=m.patch_stride,
                max_cut=cut if is_train else 0,
            )
        if is_train:
            src.train_files.append(f)
            src.train_trials.append(trials)
        else:
            src.val_files.append(f)
            src.val_trials.append(trials)
    # Sessions without a held-out file (or skipped in validation) keep their place in the lists.
    val_days = {day for day, name in wanted if name == held_out}
    vf, vt = iter(src.val_files), iter(src.val_trials)
    src.val_files = [next(vf) if d in val_days else None for d in range(len(ds.sessions))]
    src.val_trials = [next(vt) if d in val_days else np.zeros(0, np.int64) for d in range(len(ds.sessions))]
    if with_train and not any(len(t) for t in src.train_trials):
        raise DataError(f"{ds.dataset_dir}: no usable train trials; check dataset.bad_trials_dict")
    return src


def data_cache(cfg: TrainConfig) -> DataCache | None:
    root = resolve_dir(cfg.dataset.cache_dir)
    if root is None:
        return None
    max_gb = cfg.dataset.cache_max_gb
    return DataCache(str(root), None if max_gb is None else int(max_gb * 1e9))


def _load_indices(
    refs: list[FileRef], index_dir: str, cache: DataCache | None, say: Callable[[str], None]
) -> list[TrialIndex]:
    """Every file's trial index, concurrently (a fresh machine waits on round trips, not bytes).

    Per file, the cheapest source first: the local index cache; the index `fab data-push` stored
    beside the file (one GET); the file's complete copy in the data cache; and when neither
    exists but the cache has room, the file is fetched whole into the cache (the prefetch would
    have fetched it anyway) and indexed locally: many small metadata reads over S3 cost far more
    round trips than one parallel download.
    """
    fetch_first = set()
    if cache is not None:
        need = [
            k
            for k, r in enumerate(refs)
            if not r.index_uri and not cache_path(r, index_dir).is_file() and cache.ready(r) is None
        ]
        try:
            room = cache.budget_bytes()
        except OSError:
            room = 0
        if sum(refs[k].size for k in need) <= room:
            fetch_first = set(need)
    disk_full = threading.Event()

    def one(k: int) -> TrialIndex:
        ref, local = refs[k], None
        if cache is not None and ref.is_s3:
            local = cache.ready(ref)
            if local is None and k in fetch_first and not disk_full.is_set():
                try:
                    local, _ = cache.fetch(ref)
                except DiskFull as e:
                    if not disk_full.is_set():
                        disk_full.set()
                        say(f"warning: data cache disk full ({e.strerror}); indexing from S3 instead")
                except aws.AWS_FAILURES:
                    local = None  # the build over S3 below reports the S3 error, if it persists
        return load_index(ref, index_dir, local)

    start = time.monotonic()
    if len(refs) < 2:
        indices = [one(k) for k in range(len(refs))]
    else:
        with ThreadPoolExecutor(min(16, len(refs)), thread_name_prefix="index") as pool:
            indices = list(pool.map(one, range(len(refs))))
    fetched = [refs[k] for k in fetch_first if cache is not None and cache.ready(refs[k])]
    if fetched:
        took = time.monotonic() - start
        gb = sum(r.size for r in fetched) / 1e9
        say(
            f"data cache: fetched {len(fetched)} files, {gb:.2f} GB from S3 in {took:.1f} s "
            f"({gb * 1e3 / max(took, 1e-9):.0f} MB/s) into {cache.root}, indexed locally "
            "(`fab data-push` stores indexes so training starts without waiting)"
        )
    return indices


class TrainBatches(Dataset):
    """Item k is the batch of global step ``start_step + k`` for this rank."""

    def __init__(self, src: DataSource, cfg: TrainConfig, start_step: int, rank: int):
        ds = cfg.dataset
        self.src, self.seed, self.rank = src, ds.seed, rank
        self.start, self.end = start_step, cfg.num_training_batches
        self.days, self.batch_size = ds.days_per_batch, ds.batch_size
        n = len(ds.sessions)
        self.must = [d % n for d in ds.must_include_days] if ds.must_include_days else None

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def plan(self, step: int) -> list[tuple[int, int]]:
        # One generator per (seed, step, rank): resuming at any step is exact, ranks differ.
        rng = np.random.default_rng([self.seed, step, self.rank])
        return train_plan(
            rng, self.src.train_files, self.src.train_trials, self.days, self.batch_size, self.must
        )

    def __getitem__(self, k: int) -> dict[str, torch.Tensor] | Failed:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return _batch_or_failure(self.src, self.plan(self.start + k))


class ValBatches(Dataset):
    """Val batches r, r+W, r+2W, ... of the sequential one-session batches."""

    def __init__(self, src: DataSource, batch_size: int, rank: int, world_size: int):
        self.src = src
        self.plans = val_plans(src.val_files, src.val_trials, batch_size)[rank::world_size]

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor] | Failed:
        return _batch_or_failure(self.src, self.plans[k])


@dataclass
class Failed:
    """An expected failure reading a batch, carried out of the DataLoader worker as a value:
    raised there, torch would re-raise it in the trainer as a message holding the worker's
    traceback, and the user would see a traceback instead of one line."""

    error: ToolkitError


def _batch_or_failure(src: DataSource, plan: list[tuple[int, int]]) -> dict[str, torch.Tensor] | Failed:
    try:
        return src.batch(plan)
    except ToolkitError as e:
        return Failed(e)


class Batches:
    """The DataLoader, re-raising a worker's expected failure as itself (one line)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        # iter(loader) now, not at the first next(): starting the loader draws a seed from torch's
        # RNG, which the trainer keeps off its stream (fork_rng around this call) for exact resume.
        return (_raise_failed(item) for item in iter(self.loader))


def _raise_failed(item):
    if isinstance(item, Failed):
        raise item.error
    return item


def _loader(dataset: Dataset, cfg: TrainConfig) -> Batches:
    # Pinned (page-locked) batches on CUDA: the trainer's non_blocking copies to the GPU then
    # really run asynchronously; from pageable memory they are synchronous.
    pin = cfg.device != "cpu" and torch.cuda.is_available()
    workers = max(0, cfg.dataset.num_dataloader_workers)
    return Batches(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin))


def build_train_loader(
    cfg: TrainConfig,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    say: Callable[[str], None] = print,
) -> Iterable[dict]:
    """Batches for global steps start_step .. num_training_batches-1, for this rank. For an S3
    dataset with the cache on, a background thread starts copying the run's files to local disk."""
    src = open_source(cfg, say=say)
    batches = TrainBatches(src, cfg, start_step, rank)
    loader = _loader(batches, cfg)
    # The background copy into the cache (None without one): the trainer reports it at the end.
    loader.prefetcher = start_prefetch(src, batches, say) if src.cache is not None else None
    return loader


def build_val_loader(
    cfg: TrainConfig, rank: int = 0, world_size: int = 1, say: Callable[[str], None] = print
) -> Iterable[dict]:
    """Every val trial once, one session per batch; re-iterable."""
    src = open_source(cfg, say=say)
    return _loader(ValBatches(src, cfg.dataset.batch_size, rank, world_size), cfg)


def build_eval_loader(cfg: TrainConfig, split: str) -> Iterable[dict]:
    """Every trial of the held-out ``split`` once, in the validation batches (for val: exactly the
    trainer's validation batches); a split no session has is a DataError."""
    src = open_source(cfg, split, with_train=False)
    if all(f is None for f in src.val_files):
        skipped = " with dataset_probability_val > 0" if split == "val" else ""
        raise DataError(
            f"{cfg.dataset.dataset_dir}: no {SPLIT_FILES[split]} in any of the "
            f"{len(cfg.dataset.sessions)} configured sessions{skipped}; check "
            "dataset.dataset_dir and dataset.sessions, or choose the other --split"
        )
    return _loader(ValBatches(src, cfg.dataset.batch_size, 0, 1), cfg)


# Horizon for the prefetch order: enough steps for every session to appear many times over.
_ORDER_STEPS = 2000


def start_prefetch(src: DataSource, batches: TrainBatches, say: Callable[[str], None]) -> Prefetcher:
    """Copy the run's files into the cache in the background: train files in the order the
    batches first need them, then val files."""
    steps = range(batches.start, min(batches.end, batches.start + _ORDER_STEPS))
    val = [f for f in src.val_files if f is not None]
    order = first_use_order(src.train_files, (batches.plan(s) for s in steps), val)
    return Prefetcher(src.cache, [src.refs[f] for f in order], say).start()
