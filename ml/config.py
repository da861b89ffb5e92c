"""The trainer's config: the reference ``rnn_args.yaml`` keys, plus a few of our own.

The reference file loads unchanged; keys it carries but the baseline never reads
(``max_seq_elements``, ``test_percentage``, ``neural_dim``, ``input_layer_sizes`` ...) are accepted
and kept so the saved config round-trips. Our additions have defaults, so a reference file needs
none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, load_config


@dataclass
class InputNetworkConfig:
    n_input_layers: int = 1
    input_layer_sizes: list[int] = field(default_factory=lambda: [512])
    input_trainable: bool = True
    input_layer_dropout: float = 0.2


@dataclass
class ModelConfig:
    n_input_features: int = 512
    n_units: int = 768
    rnn_dropout: float = 0.4
    rnn_trainable: bool = True
    n_layers: int = 5
    patch_size: int = 14
    patch_stride: int = 4
    input_network: InputNetworkConfig = field(default_factory=InputNetworkConfig)


@dataclass
class TransformsConfig:
    white_noise_std: float = 1.0
    constant_offset_std: float = 0.2
    random_walk_std: float = 0.0
    random_walk_axis: int = -1
    static_gain_std: float = 0.0
    random_cut: int = 3
    smooth_kernel_size: int = 100
    smooth_data: bool = True
    smooth_kernel_std: float = 2.0


@dataclass
class DatasetConfig:
    data_transforms: TransformsConfig = field(default_factory=TransformsConfig)
    neural_dim: int = 512
    batch_size: int = 64
    n_classes: int = 41
    max_seq_elements: int = 500
    days_per_batch: int = 4
    seed: int = 1
    num_dataloader_workers: int = 4
    loader_shuffle: bool = False
    must_include_days: list[int] | None = None
    test_percentage: float = 0.1
    feature_subset: list[int] | None = None
    # A local folder or s3://bucket/prefix holding one subfolder per session.
    dataset_dir: str = "../data/hdf5_data_final"
    # {session: {block_num: [trial_num, ...]}} trials to leave out.
    bad_trials_dict: dict[str, Any] | None = None
    sessions: list[str] = field(default_factory=list)
    dataset_probability_val: list[float] = field(default_factory=list)
    # --- spotrun additions ---
    # Where the S3 trial index is cached (keyed by ETag and size); ~ is expanded.
    index_cache_dir: str = "~/.cache/spotrun/trial_index"
    # Concurrent ranged GETs per batch on the S3 index path.
    s3_max_concurrency: int = 16


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    gpu_number: str = "0"
    mode: str = "train"
    use_amp: bool = True
    output_dir: str = "trained_models/baseline_rnn"
    checkpoint_dir: str = "trained_models/baseline_rnn/checkpoint"
    init_from_checkpoint: bool = False
    init_checkpoint_path: str | None = None
    save_best_checkpoint: bool = True
    save_all_val_steps: bool = False
    save_final_model: bool = False
    save_val_metrics: bool = True
    early_stopping: bool = False
    early_stopping_val_steps: int = 20
    num_training_batches: int = 120_000
    lr_scheduler_type: Literal["cosine", "linear"] = "cosine"
    lr_max: float = 0.005
    lr_min: float = 0.0001
    lr_decay_steps: int = 120_000
    lr_warmup_steps: int = 1000
    lr_max_day: float = 0.005
    lr_min_day: float = 0.0001
    lr_decay_steps_day: int = 120_000
    lr_warmup_steps_day: int = 1000
    beta0: float = 0.9
    beta1: float = 0.999
    epsilon: float = 0.1
    weight_decay: float = 0.001
    weight_decay_day: float = 0.0
    seed: int = 10
    grad_norm_clip_value: float = 10.0
    batches_per_train_log: int = 200
    batches_per_val_step: int = 2000
    # 0 (the reference value): save `last` at each validation step and at exit only.
    batches_per_save: int = 0
    log_individual_day_val_PER: bool = True
    log_val_skip_logs: bool = False
    save_val_logits: bool = True
    save_val_data: bool = False
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # --- spotrun additions ---
    # "auto": continue from the newest checkpoint in checkpoint_dir if there is one;
    # "never": start fresh (refuses to overwrite existing checkpoints); or a checkpoint path.
    resume: str = "auto"
    # "auto": cuda when available (honouring gpu_number), else Apple's GPU (mps), else cpu (ml/device.py).
    device: str = "auto"
    compile: bool = False
    progress_bar: bool = True
    # Torch CPU threads; 0 leaves torch's default.
    num_threads: int = 0

    def __post_init__(self) -> None:
        ds = self.dataset
        if ds.dataset_probability_val and len(ds.dataset_probability_val) != len(ds.sessions):
            raise ConfigError(
                f"dataset.dataset_probability_val has {len(ds.dataset_probability_val)} entries "
                f"but dataset.sessions has {len(ds.sessions)}; give one per session"
            )
        if ds.days_per_batch < 1 or ds.batch_size < 1:
            raise ConfigError("dataset.days_per_batch and dataset.batch_size must be at least 1")
        if self.init_checkpoint_path in ("None", "none", ""):
            # The reference file writes the string None.
            self.init_checkpoint_path = None

    @property
    def n_features(self) -> int:
        """Features the model sees: the subset's size when one is set."""
        subset = self.dataset.feature_subset
        return len(subset) if subset else self.model.n_input_features


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)
