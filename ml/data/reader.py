"""Fetch trials' features: one positional read (local, or an S3 file's complete copy in the dataset
cache) or one ranged GET (S3) per trial, from the trial index; a batch's S3 reads run concurrently.
Files whose features are chunked or compressed fall back to h5py (over s3fs with a block cache for
S3)."""

from __future__ import annotations

from functools import partial

import numpy as np

from ml.data.cache import DataCache
from ml.data.index import TrialIndex
from ml.data.storage import S3_ERRORS, FileRef, cached_h5, read_failure, read_range, thread_pool
from ml.data.trials import group_name


def read_trial(ref: FileRef, index: TrialIndex, i: int, cache: DataCache | None = None) -> np.ndarray:
    """Trial ``i``'s input_features as a (time, features) float32 array. For an S3 file still
    being fetched into ``cache``: from the partial copy when the trial is already in or the
    prefetch is bringing it; what nobody is fetching, with a ranged GET announced to the prefetch
    before and written into the partial copy after (so its bytes are never fetched twice)."""
    rows, n_features = int(index.rows[i]), index.n_features
    if index.offsets[i] >= 0:
        offset, size = int(index.offsets[i]), int(index.nbytes[i])
        partly = cache is not None and ref.is_s3
        raw = cache.read_partial(ref, offset, size, partial(read_range, ref)) if partly else None
        if raw is None:
            if partly:
                cache.streaming(ref, offset, size)
            raw = read_range(ref, offset, size)
            if partly:
                cache.record(ref, offset, raw)
        x = np.frombuffer(raw, dtype=np.dtype(index.dtype)).reshape(rows, n_features)
    else:
        try:
            x = cached_h5(ref)[group_name(i)]["input_features"][()]
        except S3_ERRORS as e:
            raise read_failure(e, ref, group_name(i)) from None
    return np.asarray(x, dtype=np.float32)


def read_trials(
    refs: list[FileRef],
    indices: list[TrialIndex],
    wanted: list[tuple[int, int]],
    max_concurrency: int,
    cache: DataCache | None = None,
) -> list[np.ndarray]:
    """Features for each ``(file id, trial)`` in ``wanted``, in order. S3 files already complete in
    ``cache`` are read from the local copy; files still being fetched share their partial copy."""
    if cache is not None:
        refs = list(refs)
        for f in {f for f, _ in wanted}:
            if refs[f].is_s3:
                local = cache.ready(refs[f])
                if local:
                    refs[f] = FileRef(local, refs[f].size, refs[f].version)
    # A trial drawn twice in one batch is read once (on S3: one GET, not two at the same time).
    first: dict[tuple[int, int], int] = {}
    for k, key in enumerate(wanted):
        first.setdefault(key, k)
    unique = sorted(first.values())
    ranged_s3 = [
        k for k in unique if refs[wanted[k][0]].is_s3 and indices[wanted[k][0]].offsets[wanted[k][1]] >= 0
    ]
    out: list[np.ndarray | None] = [None] * len(wanted)
    if len(ranged_s3) > 1 and max_concurrency > 1:
        pool = thread_pool(max_concurrency)
        futures = {
            k: pool.submit(read_trial, refs[wanted[k][0]], indices[wanted[k][0]], wanted[k][1], cache)
            for k in ranged_s3
        }
        for k, fut in futures.items():
            out[k] = fut.result()
    # h5py serialises all calls behind one lock, so the fallback (and local preads) run in order.
    for k in unique:
        if out[k] is None:
            f, i = wanted[k]
            out[k] = read_trial(refs[f], indices[f], i, cache)
    for k, key in enumerate(wanted):
        if out[k] is None:
            out[k] = out[first[key]].copy()  # its own array: a batch's rows never alias
    return out  # type: ignore[return-value]
