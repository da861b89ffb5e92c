"""Training batches/s on this machine's CPU, and how much of a step is spent waiting for data.

    .venv/bin/python benchmarks/train_step.py

Cases (one line each):
- demo: configs/demo.yaml as `make demo` runs it (4 synthetic sessions, batch 16, 2x128 GRU);
- baseline: configs/rnn_args.yaml's model (45 sessions, 5x768 GRU, 44,315,177 parameters) at a
  reduced batch of 4 trials stretched to ~500 bins (synthetic trials are 60-250 bins; each bin is
  repeated, as slower speech, to reach the length of a typical real trial);
- baseline from S3: the same, with dataset.dataset_dir on S3 (moto's server, started here, behind
  the counting proxy of tests/peers/proxy.py adding LATENCY_S per request; the data uploaded with
  `fab data-push`'s code, so its trial indexes are stored beside it) and the dataset cache on, in
  steady state: timed after the prefetch has copied every file, as a run is once its first minutes
  are past. The line adds the GETs that reached S3 while it was timed.

Each case trains a few warm-up steps, then times `ml.trainer.train_step` (augmentation, forward,
CTC, backward, clip, AdamW, schedule) with batches from the real loader (ml.data, local HDF5);
"data wait" is the time spent in the loader's next() as a share of the whole step.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.config import load_train_config  # noqa: E402
from ml.data import build_train_loader  # noqa: E402
from ml.data.synthetic import write_synthetic  # noqa: E402
from ml.model import build_model, count_parameters  # noqa: E402
from ml.schedule import build_optimizer, build_scheduler  # noqa: E402
from ml.trainer import train_step  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LATENCY_S = 0.03  # per S3 request, as benchmarks/data_path.py
BASELINE = [
    "dataset.batch_size=4",
    "dataset.num_dataloader_workers=0",
    "use_amp=false",
]


def stretch(batch: dict, bins: int) -> dict:
    """Repeat every time bin k times so the batch's longest trial reaches about ``bins`` bins."""
    k = max(1, math.ceil(bins / batch["input_features"].shape[1]))
    if k == 1:
        return batch
    out = dict(batch)
    out["input_features"] = batch["input_features"].repeat_interleave(k, dim=1)
    out["n_time_steps"] = batch["n_time_steps"] * k
    return out


def bench(name: str, cfg, steps: int, warmup: int, bins: int | None = None, proxy=None) -> None:
    """Time ``steps`` train steps after ``warmup``; ``proxy``: count the S3 GETs while timed."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    batches = iter(build_train_loader(cfg, 0))
    wait = total = 0.0
    shape = None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(batches)
        if bins:
            batch = stretch(batch, bins)
        t1 = time.perf_counter()
        loss, _, _ = train_step(model, batch, optimizer, scheduler, cfg, device)
        float(loss)
        t2 = time.perf_counter()
        if i + 1 == warmup and proxy is not None:
            proxy.reset()
        if i >= warmup:
            wait += t1 - t0
            total += t2 - t0
            shape = tuple(batch["input_features"].shape[:2])
    gets = f"; {proxy.gets} GETs from S3 while timed" if proxy is not None else ""
    print(
        f"train_step {name}: {steps / total:.2f} batches/s ({1000 * total / steps:.0f} ms/batch; "
        f"batch {shape[0]} trials x {shape[1]} bins; {count_parameters(model):,} parameters; "
        f"data wait {100 * wait / total:.1f}% of step time; {torch.get_num_threads()} threads{gets})",
        flush=True,
    )


@contextmanager
def s3_stand_in():
    """moto's S3 server on loopback behind the latency-adding counting proxy; AWS_* variables
    point at it (and at fake credentials) until the block ends. Yields (boto3 client, proxy)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from ml.data import storage
    from tests.peers.proxy import CountingProxy

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = dict(os.environ)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    moto_url = f"http://127.0.0.1:{server._server.server_port}"
    proxy = CountingProxy(moto_url, latency_s=LATENCY_S).start()
    try:
        for var in [v for v in os.environ if v.startswith("AWS_")]:
            del os.environ[var]
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=proxy.url,
        )
        storage.reset_clients()
        yield boto3.client("s3", endpoint_url=moto_url), proxy
    finally:
        storage.reset_clients()
        os.environ.clear()
        os.environ.update(saved)
        proxy.stop()
        server.stop()


def bench_from_s3(name: str, data: Path, tmp: Path, steps: int, warmup: int, bins: int) -> None:
    """The baseline case reading from S3 in steady state: data pushed, the cache filled first."""
    from ec2.cloud import datasets

    with s3_stand_in() as (s3, proxy):
        s3.create_bucket(Bucket="bench-train")
        datasets.push(s3, data, "s3://bench-train/baseline", say=lambda _: None)
        cfg = load_train_config(
            CONFIGS / "rnn_args.yaml",
            [
                "dataset.dataset_dir=s3://bench-train/baseline",
                f"dataset.index_cache_dir={tmp / 'index'}",
                f"dataset.cache_dir={tmp / 'cache'}",
                *BASELINE,
            ],
        )
        warming = build_train_loader(cfg, 0, say=lambda _: None)
        if not warming.prefetcher.join(600) or warming.prefetcher.failed:
            raise SystemExit(f"train_step {name}: the prefetch did not complete")
        bench(name, cfg, steps=steps, warmup=warmup, bins=bins, proxy=proxy)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        demo_data = Path(tmp) / "demo"
        write_synthetic(demo_data, n_sessions=4, n_trials=96, seed=0)
        demo = load_train_config(CONFIGS / "demo.yaml", [f"dataset.dataset_dir={demo_data}"])
        bench("demo (configs/demo.yaml, batch 16)", demo, steps=20, warmup=3)

        base_data = Path(tmp) / "baseline"
        write_synthetic(base_data, n_sessions=45, n_trials=4, seed=0)
        base = load_train_config(CONFIGS / "rnn_args.yaml", [f"dataset.dataset_dir={base_data}", *BASELINE])
        bench(
            "baseline shape (configs/rnn_args.yaml, 45 sessions, batch 4 x ~500 bins)",
            base,
            steps=4,
            warmup=1,
            bins=500,
        )
        bench_from_s3(
            f"baseline shape from S3, steady state (cache filled; moto behind {LATENCY_S * 1000:.0f} ms)",
            base_data,
            Path(tmp),
            steps=4,
            warmup=1,
            bins=500,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
