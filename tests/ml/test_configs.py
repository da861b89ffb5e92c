"""Every file in configs/ loads through its loader, and the trainer's configs build their model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ec2.config import load_aws_config
from ml.config import load_train_config
from ml.model import build_model, count_parameters

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
# aws.yaml is the launch config; every other file is a trainer config.
LOADERS = {"aws.yaml": load_aws_config}


def test_the_configs_folder_holds_the_expected_files():
    names = {p.name for p in CONFIGS}
    assert {"rnn_args.yaml", "demo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    loader = LOADERS.get(path.name, load_train_config)
    assert loader(path, []) is not None


def test_reference_config_is_the_baseline():
    cfg = load_train_config(CONFIGS[0].parent / "rnn_args.yaml")
    assert len(cfg.dataset.sessions) == 45 and cfg.num_training_batches == 120_000
    assert cfg.init_checkpoint_path is None  # the file's string None


def test_demo_config_is_small_and_cpu_friendly():
    cfg = load_train_config(CONFIGS[0].parent / "demo.yaml")
    assert cfg.dataset.dataset_dir == "data/synthetic" and len(cfg.dataset.sessions) == 4
    assert cfg.dataset.dataset_probability_val == [0, 1, 1, 1]
    assert not cfg.use_amp and cfg.dataset.num_dataloader_workers <= 1
    assert cfg.output_dir == "trained_models/demo" and cfg.checkpoint_dir == "trained_models/demo/checkpoint"
    assert count_parameters(build_model(cfg)) < 10_000_000
