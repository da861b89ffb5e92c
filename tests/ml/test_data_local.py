"""The data path on a local folder: batch shapes, the reference's batching rules, seeding, the
trial index cache, and DataLoader workers."""

from __future__ import annotations

import math
import os

import h5py
import numpy as np
import pytest
import torch

from ml.data import build_train_loader, build_val_loader
from ml.data.index import cache_path
from ml.data.storage import list_sessions
from ml.data.synthetic import reference_sessions
from tests.peers.trainkit import data_cfg, same_batch

SESSIONS = reference_sessions()[:4]


def trials_of(path) -> list[tuple[int, int, np.ndarray]]:
    with h5py.File(path) as f:
        return [
            (int(f[k].attrs["block_num"]), int(f[k].attrs["trial_num"]), f[k]["input_features"][()])
            for k in sorted(f)
        ]


def test_batch_shapes_padding_and_labels(synthetic_data, tmp_path):
    batch = next(iter(build_train_loader(data_cfg(synthetic_data, tmp_path))))
    B = 16
    assert batch["input_features"].dtype == torch.float32
    assert batch["input_features"].shape[0] == B and batch["input_features"].shape[2] == 512
    for key in ("seq_class_ids", "transcriptions"):
        assert batch[key].shape == (B, 500) and batch[key].dtype == torch.int64
    for key in ("n_time_steps", "phone_seq_lens", "day_indices", "block_nums", "trial_nums"):
        assert batch[key].shape == (B,) and batch[key].dtype == torch.int64
    T = batch["input_features"].shape[1]
    assert T == batch["n_time_steps"].max()
    for b in range(B):
        n = int(batch["n_time_steps"][b])
        assert torch.all(batch["input_features"][b, n:] == 0)
        L = int(batch["phone_seq_lens"][b])
        assert batch["seq_class_ids"][b, L - 1] == 40 and torch.all(batch["seq_class_ids"][b, L:] == 0)
    # Features are the file's own: find one trial in its file and compare.
    day, blk, trl = (int(batch[k][0]) for k in ("day_indices", "block_nums", "trial_nums"))
    rows = trials_of(synthetic_data / SESSIONS[day] / "data_train.hdf5")
    x = next(x for bb, tt, x in rows if (bb, tt) == (blk, trl))
    assert np.array_equal(batch["input_features"][0, : len(x)].numpy(), x)


def test_days_per_batch_and_trials_per_session(synthetic_data, tmp_path):
    cfg = data_cfg(synthetic_data, tmp_path, steps=20, batch_size=10, days_per_batch=3)
    per_day = math.ceil(10 / 3)
    for batch in build_train_loader(cfg):
        days = batch["day_indices"].tolist()
        assert len(days) == 10 and len(set(days)) == 3
        counts = sorted((days.count(d) for d in set(days)), reverse=True)
        assert counts == [per_day, per_day, 10 - 2 * per_day]
        # Grouped by session: the trims come off the last session only.
        assert days == sorted(days, key=lambda d: days.index(d))


def test_seeded_resume_exact_and_ranks_differ(synthetic_data, tmp_path):
    cfg = data_cfg(synthetic_data, tmp_path, steps=8)
    full = list(build_train_loader(cfg))
    assert len(full) == 8
    again = list(build_train_loader(cfg))
    assert all(same_batch(a, b) for a, b in zip(full, again, strict=True))
    resumed = list(build_train_loader(cfg, start_step=5))
    assert len(resumed) == 3 and all(same_batch(a, b) for a, b in zip(full[5:], resumed, strict=True))
    assert not same_batch(full[0], full[1])
    other_rank = list(build_train_loader(cfg, rank=1, world_size=2))
    assert not same_batch(full[0], other_rank[0])
    reseeded = data_cfg(synthetic_data, tmp_path, steps=8, seed=2)
    assert not same_batch(full[0], next(iter(build_train_loader(reseeded))))


def test_val_covers_every_trial_once_and_skips_sessions(synthetic_data, tmp_path):
    # Session 0 has no val file, session 2 has probability 0: both skipped.
    cfg = data_cfg(synthetic_data, tmp_path, batch_size=4, dataset_probability_val=[1, 1, 0, 1])
    loader = build_val_loader(cfg)
    seen = []
    for _ in range(2):  # re-iterable: the trainer validates many times
        seen = []
        for batch in loader:
            days = set(batch["day_indices"].tolist())
            assert len(days) == 1 and len(batch["day_indices"]) <= 4
            seen += [
                (d, b, t)
                for d, b, t in zip(
                    batch["day_indices"].tolist(),
                    batch["block_nums"].tolist(),
                    batch["trial_nums"].tolist(),
                    strict=True,
                )
            ]
    expected = [
        (d, b, t) for d in (1, 3) for b, t, _ in trials_of(synthetic_data / SESSIONS[d] / "data_val.hdf5")
    ]
    assert seen == expected  # in order, each once
    # Two ranks split the batches r, r+W, ... and together cover the same trials.
    parts = [list(build_val_loader(cfg, rank=r, world_size=2)) for r in (0, 1)]
    whole = list(loader)
    assert all(same_batch(a, b) for a, b in zip(parts[0], whole[0::2], strict=True))
    assert all(same_batch(a, b) for a, b in zip(parts[1], whole[1::2], strict=True))


def test_feature_subset(synthetic_data, tmp_path):
    subset = [3, 7, 100, 511]
    full = next(iter(build_train_loader(data_cfg(synthetic_data, tmp_path))))
    part = next(iter(build_train_loader(data_cfg(synthetic_data, tmp_path, feature_subset=subset))))
    assert part["input_features"].shape[2] == 4
    assert torch.equal(part["input_features"], full["input_features"][:, :, subset])


def test_bad_trials_excluded_and_must_include_days(synthetic_data, tmp_path):
    # Leave out all of session 1's block-1 trials except trial 0, in train and in val.
    session = SESSIONS[1]
    bad = {session: {1: list(range(1, 20))}, SESSIONS[3]: {"3": [0, 1]}}  # val blocks start at 3
    cfg = data_cfg(synthetic_data, tmp_path, steps=30, bad_trials_dict=bad, must_include_days=[1])
    for batch in build_train_loader(cfg):
        days = batch["day_indices"]
        assert 1 in days.tolist()  # must_include_days
        mine = (days == 1) & (batch["block_nums"] == 1)
        assert set(batch["trial_nums"][mine].tolist()) <= {0}
    val = [
        (d, b, t)
        for batch in build_val_loader(cfg)
        for d, b, t in zip(
            *(batch[k].tolist() for k in ("day_indices", "block_nums", "trial_nums")), strict=True
        )
    ]
    assert (3, 3, 0) not in val and (3, 3, 1) not in val and (3, 3, 2) in val


def test_index_cache_reused_and_rebuilt_when_file_changes(synthetic_data, tmp_path):
    cache = tmp_path / "cache"
    cfg = data_cfg(synthetic_data, cache)
    first = next(iter(build_train_loader(cfg)))
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 7  # 4 train files + 3 val files (session 0 has none)
    stamp = {p: p.stat().st_mtime_ns for p in files}
    again = next(iter(build_train_loader(cfg)))
    assert same_batch(first, again) and {p: p.stat().st_mtime_ns for p in files} == stamp
    # A changed file (new mtime) gets a new cache entry.
    train0 = synthetic_data / SESSIONS[0] / "data_train.hdf5"
    before = cache_path(list_sessions(str(synthetic_data), SESSIONS)[SESSIONS[0]]["data_train.hdf5"], cache)
    st = train0.stat()
    os.utime(train0, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = cache_path(list_sessions(str(synthetic_data), SESSIONS)[SESSIONS[0]]["data_train.hdf5"], cache)
    assert before != after
    build_train_loader(cfg)
    assert after.is_file()


def test_relative_dataset_dir_and_workers(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.chdir(synthetic_data.parent)
    plain = list(build_train_loader(data_cfg(synthetic_data.name, tmp_path, steps=4)))
    two = data_cfg(synthetic_data.name, tmp_path, steps=4, num_dataloader_workers=2)
    forked = list(build_train_loader(two))
    assert all(same_batch(a, b) for a, b in zip(plain, forked, strict=True))


def test_loader_pins_batches_only_on_cuda(synthetic_data, tmp_path):
    """Pinned batches make the trainer's non_blocking copies to the GPU asynchronous; on the CPU
    there is nothing to pin for."""
    cpu = data_cfg(synthetic_data, tmp_path / "idx")
    cpu.device = "cpu"
    assert build_train_loader(cpu).loader.pin_memory is False
    auto = data_cfg(synthetic_data, tmp_path / "idx")
    assert build_train_loader(auto).loader.pin_memory is torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_arrive_pinned_on_cuda(synthetic_data, tmp_path):
    batch = next(
        iter(build_train_loader(data_cfg(synthetic_data, tmp_path / "idx", num_dataloader_workers=2)))
    )
    assert all(v.is_pinned() for v in batch.values())
