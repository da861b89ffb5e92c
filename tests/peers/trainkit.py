"""Helpers shared by the trainer tests: a tiny synthetic dataset and tiny-run overrides.

The runs use configs/demo.yaml with a 1-layer, 16-unit GRU, batch 4 and one thread, so a step
takes milliseconds and a test's training costs well under a second.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
SESSIONS = ["t15.2023.08.11", "t15.2023.08.13"]


def make_data(out: Path) -> Path:
    """2 sessions (the first train-only), 6 train trials each: the tests' dataset."""
    from ml.data.synthetic import write_synthetic

    write_synthetic(out, n_sessions=2, n_trials=6, seed=0)
    return out


def tiny(data: Path, run: Path, steps: int, *extra: str) -> list[str]:
    """Overrides for a tiny run writing into ``run`` (output_dir) and ``run/checkpoint``."""
    return [
        f"dataset.dataset_dir={data}",
        "dataset.sessions=[" + ", ".join(SESSIONS) + "]",
        "dataset.dataset_probability_val=[0, 1]",
        "dataset.batch_size=4",
        "dataset.days_per_batch=2",
        "dataset.num_dataloader_workers=0",
        "model.n_units=16",
        "model.n_layers=1",
        "model.rnn_dropout=0",
        f"num_training_batches={steps}",
        "batches_per_train_log=5",
        "batches_per_val_step=5",
        "lr_warmup_steps=2",
        "lr_warmup_steps_day=2",
        "lr_decay_steps=20",
        "lr_decay_steps_day=20",
        "use_amp=false",
        "num_threads=1",
        "progress_bar=false",
        "device=cpu",
        f"output_dir={run}",
        f"checkpoint_dir={run / 'checkpoint'}",
        *extra,
    ]


# A few steps of configs/demo.yaml (its 4 sessions and their day layers), for runs in tmux through
# sshd: one thread, batch 2 (a step draws one trial from each of batch_size sessions and trains
# their 512 x 512 day layers: 0.049 CPU-s a step at batch 2, 0.076 at batch 4, which tests nothing
# more), and a 1-layer 32-unit GRU (a step and a checkpoint of the demo's GRU cost twice as much
# and test nothing more); tests add num_training_batches, dataset_dir and their output folders.
# Later overrides win, so a test can set its own validation and schedule steps after these.
TINY_TRAIN = [
    "batches_per_train_log=1",
    "batches_per_val_step=1000",
    "lr_warmup_steps=1",
    "lr_decay_steps=3000",
    "lr_warmup_steps_day=1",
    "lr_decay_steps_day=3000",
    "use_amp=false",
    "num_threads=1",
    "progress_bar=false",
    "dataset.num_dataloader_workers=0",
    "dataset.batch_size=2",
    "model.n_units=32",
    "model.n_layers=1",
]


def data_cfg(dataset_dir, cache, steps: int = 6, **ds):
    """A TrainConfig over the 4-session synthetic set for the data-path tests; ``ds`` overrides
    dataset keys."""
    from ml.config import DatasetConfig, TrainConfig
    from ml.data.synthetic import reference_sessions

    base = dict(
        dataset_dir=str(dataset_dir),
        sessions=reference_sessions()[:4],
        dataset_probability_val=[0, 1, 1, 1],
        num_dataloader_workers=0,
        index_cache_dir=str(cache),
        cache_dir=None,  # the streaming path; the dataset cache's tests turn it on
        batch_size=16,
        days_per_batch=2,
    )
    base.update(ds)
    return TrainConfig(dataset=DatasetConfig(**base), num_training_batches=steps)


def same_batch(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "ml.train", "--config", DEMO, *overrides]


def distinct_reads(cfg) -> tuple[int, int]:
    """(trials, feature bytes) the train loader reads over the run: a batch that draws a trial
    twice reads it once. Opens the data source (on S3: a LIST), so call it before counting."""
    from ml.data.loader import TrainBatches, open_source

    src = open_source(cfg, say=lambda _: None)
    batches = TrainBatches(src, cfg, 0, 0)
    plans = [set(batches.plan(s)) for s in range(batches.start, batches.end)]
    return sum(len(p) for p in plans), sum(int(src.indices[f].nbytes[i]) for p in plans for f, i in p)


def write_metrics(path: Path, val_every: int = 50, last: int = 400) -> Path:
    """A metrics.csv as the trainer writes it: a train row every 10 steps, val every val_every."""
    rows = ["step,split,loss,per,lr,seconds"]
    for step in range(0, last + 1, 10):
        rows.append(f"{step},train,{300 * math.exp(-step / 100) + 20:.3f},,{0.005:.5f},{step * 0.1:.1f}")
        if step % val_every == 0:
            per = 1.2 * math.exp(-step / 150) + 0.1
            rows.append(f"{step},val,{250 * math.exp(-step / 120) + 25:.3f},{per:.4f},0.005,{step * 0.1:.1f}")
    path.write_text("\n".join(rows) + "\n")
    return path
