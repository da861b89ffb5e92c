"""A train config's shape: what decides a step's time (the model, the batch, AMP/compile, the
number of sessions), never paths, rates or seeds. ml.bench records it with each measurement, and
the laptop (ec2.benchstore, `fab prices --train-config`) keys measured step times by it. No torch
here: every `fab` command imports this, and torch would add seconds to each."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from ml.config import TrainConfig

# Dataset settings that change what a step computes; paths, seeds and split fractions do not.
_DATASET_SHAPE = (
    "batch_size",
    "days_per_batch",
    "max_seq_elements",
    "neural_dim",
    "n_classes",
    "feature_subset",
    "num_dataloader_workers",
    "data_transforms",
)


def config_shape(cfg: TrainConfig) -> dict:
    """What decides a step's time: the model, the batch, AMP/compile and the number of sessions
    (each has its own input layer). Paths, learning rates and seeds are left out."""
    dataset = dataclasses.asdict(cfg.dataset)
    return {
        "model": dataclasses.asdict(cfg.model),
        "dataset": {k: dataset[k] for k in _DATASET_SHAPE},
        "sessions": len(cfg.dataset.sessions),
        "use_amp": cfg.use_amp,
        "compile": cfg.compile,
    }


def shape_key(cfg: TrainConfig) -> str:
    """A short, stable hash of config_shape (the bench store's key part for the config)."""
    text = json.dumps(config_shape(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
