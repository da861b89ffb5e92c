"""Benchmark the data checks at the release's size: what they add to opening the data and to
each batch. One line per case.

- labels: ``check_labels`` over one index of 8,072 trials (the release's train trials in one
  file: the worst case; the release splits them over 45 files) with 500 label slots each, ~40
  phonemes and 300-900 bins per trial.
- finite: ``check_finite`` on one batch of 64 trials x 900 bins x 512 float32 (the longest real
  trials), the per-batch cost in a DataLoader worker.

    .venv/bin/python benchmarks/data_checks.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import numpy as np

    from ml.data.checks import check_finite, check_labels
    from ml.data.index import LABEL_LEN, TrialIndex

    rng = np.random.default_rng(0)
    n = 8072
    seq_len = rng.integers(20, 60, n)
    ids = np.zeros((n, LABEL_LEN), np.int32)
    for i, k in enumerate(seq_len):
        ids[i, :k] = rng.integers(1, 41, k)
    z = np.zeros(n, np.int64)
    index = TrialIndex(
        "bench",
        "<f4",
        512,
        True,
        z,
        z,
        rng.integers(300, 900, n),
        seq_len,
        z,
        z,
        ids,
        ids,
        np.array([""] * n),
    )
    trials = np.arange(n)
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        check_labels(index, trials, n_classes=41, patch_size=14, patch_stride=4, max_cut=2)
    labels_ms = 1000 * (time.perf_counter() - t0) / reps
    print(f"labels: {n} trials checked in {labels_ms:.1f} ms")

    feats = [rng.standard_normal((900, 512), dtype=np.float32) for _ in range(64)]
    plan = [(0, i) for i in range(64)]
    t0 = time.perf_counter()
    for _ in range(reps):
        check_finite(feats, plan, [index])
    finite_ms = 1000 * (time.perf_counter() - t0) / reps
    mb = 64 * 900 * 512 * 4 / 1e6
    print(f"finite: one batch of 64 x 900 x 512 float32 ({mb:.0f} MB) checked in {finite_ms:.1f} ms")


if __name__ == "__main__":
    main()
