"""The trainer's two entry points: ``build_train_loader`` and ``build_val_loader``.

Both open the dataset up front (list the sessions, load or build every needed trial index, check
shapes), so a bad dataset fails before training starts with one DataError naming the file. The
loaders are torch DataLoaders whose items are whole batches (``batch_size=None``): the train
dataset maps a global step to its batch, the val dataset an ordinal to a val batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ml.config import TrainConfig
from ml.data.batches import collate, train_plan, usable_trials, val_plans
from ml.data.checks import check_finite, check_labels
from ml.data.index import TrialIndex, load_index
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

    def batch(self, plan: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        feats = read_trials(self.refs, self.indices, plan, self.max_concurrency)
        check_finite(feats, plan, self.indices)
        rows = [(self.indices[f], i, self.file_day[f]) for f, i in plan]
        return collate(feats, rows, self.feature_subset)


def open_source(cfg: TrainConfig) -> DataSource:
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
    src = DataSource([], [], [], [], [], [], [], ds.feature_subset, max(1, ds.s3_max_concurrency))

    def add(day: int, ref: FileRef) -> int:
        index = load_index(ref, ds.index_cache_dir)
        if index.n_features != n_in:
            raise DataError(f"{ref.uri}: input_features has {index.n_features} features but "
                            f"model.n_input_features is {n_in}; fix the config or the data")
        src.refs.append(ref)
        src.indices.append(index)
        src.file_day.append(day)
        return len(src.refs) - 1

    m = cfg.model
    cut = max(0, ds.data_transforms.random_cut - 1)  # the longest random cut a train batch may get

    def usable(f: int, session: str, max_cut: int) -> np.ndarray:
        trials = usable_trials(src.indices[f], bad.get(session))
        check_labels(src.indices[f], trials, n_classes=ds.n_classes, patch_size=m.patch_size,
                     patch_stride=m.patch_stride, max_cut=max_cut)
        return trials

    for day, session in enumerate(ds.sessions):
        files = found[session]
        f = add(day, files["data_train.hdf5"])
        src.train_files.append(f)
        src.train_trials.append(usable(f, session, cut))
        if probs[day] > 0 and "data_val.hdf5" in files:
            v = add(day, files["data_val.hdf5"])
            src.val_files.append(v)
            src.val_trials.append(usable(v, session, 0))
        else:
            src.val_files.append(None)
            src.val_trials.append(np.zeros(0, np.int64))
    if not any(len(t) for t in src.train_trials):
        raise DataError(f"{ds.dataset_dir}: no usable train trials; check dataset.bad_trials_dict")
    return src


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
        return train_plan(rng, self.src.train_files, self.src.train_trials, self.days, self.batch_size,
                          self.must)

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


def _loader(dataset: Dataset, workers: int) -> Batches:
    return Batches(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=max(0, workers)))


def build_train_loader(
    cfg: TrainConfig, start_step: int = 0, rank: int = 0, world_size: int = 1
) -> Iterable[dict]:
    """Batches for global steps start_step .. num_training_batches-1, for this rank."""
    src = open_source(cfg)
    return _loader(TrainBatches(src, cfg, start_step, rank), cfg.dataset.num_dataloader_workers)


def build_val_loader(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> Iterable[dict]:
    """Every val trial once, one session per batch; re-iterable."""
    src = open_source(cfg)
    return _loader(ValBatches(src, cfg.dataset.batch_size, rank, world_size),
                   cfg.dataset.num_dataloader_workers)
