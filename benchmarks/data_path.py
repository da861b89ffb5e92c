"""Benchmark the trainer's data path: trials/s, GET requests and bytes fetched per trial.

Cases: the local index path (pread), the S3 index path (one ranged GET per trial, a batch's GETs
concurrent), S3 through h5py over s3fs with a block cache (the fallback), and S3 through h5py over
s3fs with its defaults (readahead). S3 is moto's server behind the counting proxy of
tests/peers/proxy.py adding LATENCY_S per request (moto itself answers instantly). The data is
the synthetic set (4 sessions x 96 train trials, ~180 KB of features per trial). One line per case.
    .venv/bin/python benchmarks/data_path.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LATENCY_S = 0.03
BATCHES = 6  # for the index paths (batch 64, 4 sessions per batch)
H5_TRIALS = 48  # the h5py paths are slow: fewer trials


def main() -> None:
    import boto3
    import h5py
    import numpy as np
    from moto.server import ThreadedMotoServer

    from ml.config import DatasetConfig, TrainConfig
    from ml.data import build_train_loader, storage
    from ml.data.loader import TrainBatches, open_source
    from ml.data.synthetic import write_synthetic
    from tests.peers.proxy import CountingProxy

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    summary = write_synthetic(tmp / "ds", n_sessions=4, n_trials=96, seed=0)
    sessions = sorted({s for s, _, _ in summary.files})

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    moto_url = f"http://127.0.0.1:{server._server.server_port}"
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket="bench-data")
    for path in sorted((tmp / "ds").rglob("*.hdf5")):
        s3.upload_file(str(path), "bench-data", f"ds/{path.relative_to(tmp / 'ds')}")
    proxy = CountingProxy(moto_url, latency_s=LATENCY_S).start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.url

    def cfg(dataset_dir: str) -> TrainConfig:
        return TrainConfig(
            num_training_batches=BATCHES,
            dataset=DatasetConfig(
                dataset_dir=dataset_dir,
                sessions=sessions,
                dataset_probability_val=[0, 1, 1, 1],
                num_dataloader_workers=0,
                index_cache_dir=str(tmp / "index"),
                batch_size=64,
                days_per_batch=4,
            ),
        )

    def line(case: str, trials: int, seconds: float, extra: str = "") -> None:
        gets = proxy.gets / trials if proxy.gets else 0.0
        print(
            f"{case:<34} {trials / seconds:8.1f} trials/s  {gets:5.2f} GET/trial  "
            f"{proxy.bytes_out / trials / 1024:8.1f} KiB/trial{extra}",
            flush=True,
        )

    # Local index path.
    proxy.reset()
    build_train_loader(cfg(str(tmp / "ds")))  # index built and cached
    t = time.perf_counter()
    n = sum(len(b["n_time_steps"]) for b in build_train_loader(cfg(str(tmp / "ds"))))
    dt = time.perf_counter() - t
    print(f"{'local index (pread)':<34} {n / dt:8.1f} trials/s  (no HTTP; index cached)", flush=True)

    # S3 index: the first open builds the indices (small parts via h5py over s3fs, 64 KB blocks).
    s3_cfg = cfg("s3://bench-data/ds")
    proxy.reset()
    t = time.perf_counter()
    src = open_source(s3_cfg)
    dt = time.perf_counter() - t
    indexed = sum(len(ix) for ix in src.indices)
    line("S3 index build (first run only)", indexed, dt, f"  {dt:.1f} s for {len(src.indices)} files")

    proxy.reset()
    t = time.perf_counter()
    n = sum(len(b["n_time_steps"]) for b in build_train_loader(s3_cfg))
    line(f"S3 index (ranged GET, {s3_cfg.dataset.s3_max_concurrency} conc.)", n, time.perf_counter() - t)

    # The same trials through h5py over s3fs: block cache, then s3fs's default readahead cache.
    plan = [p for step in range(BATCHES) for p in TrainBatches(src, s3_cfg, 0, 0).plan(step)][:H5_TRIALS]
    fs = storage.s3_filesystem()
    for case, kwargs in (
        ("S3 h5py + blockcache (1 MB)", {"cache_type": "blockcache", "block_size": storage.H5_BLOCK_SIZE}),
        ("S3 h5py + s3fs defaults", {}),
    ):
        proxy.reset()
        handles: dict[int, h5py.File] = {}
        t = time.perf_counter()
        total = 0.0
        for f, i in plan:
            if f not in handles:
                handles[f] = h5py.File(fs.open(src.refs[f].uri[len("s3://") :], "rb", **kwargs), "r")
            total += float(np.asarray(handles[f][f"trial_{i:04d}/input_features"][()]).sum())
        line(case, len(plan), time.perf_counter() - t)
        for h in handles.values():
            h.close()
    proxy.stop()
    server.stop()


if __name__ == "__main__":
    main()
