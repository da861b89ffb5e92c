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

from common.checks import FieldError, Range, check_fields, checked
from common.config import ConfigError, blame_field, load_config
from common.s3uri import s3_field

# Every number below declares its valid range (a test checks none is missing); TrainConfig checks
# them all when it is built, before anything runs, and the loader names where a bad value came from.
FRACTION = Range(0, 1)
SEED = Range(0, 2**32 - 1, why="numpy's seed range")


def each(check: Range):
    """The check of a list: ``check`` on every element, naming ``key[i]``."""

    def run(values: list, key: str) -> None:
        for i, value in enumerate(values):
            problem = check.problem(value)
            if problem:
                raise FieldError(f"{key}[{i}]", problem)

    return run


def below_one(value: float, key: str) -> None:
    """0 <= value < 1 (AdamW's betas)."""
    problem = Range(0, 1).problem(value)
    if problem or value >= 1:
        raise FieldError(key, f"must be from 0 to less than 1, got {value}")


def _whole(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())


def bad_trials_shape(value: dict, key: str) -> None:
    """``{session: {block_num: [trial_num, ...]}}``, with whole numbers for blocks and trials
    (what ml.data.batches.usable_trials reads); anything else used to fail mid-way with a
    traceback or leave nothing out."""
    for session, blocks in value.items():
        if not isinstance(blocks, dict):
            raise FieldError(
                f"{key}.{session}",
                f"must map block numbers to lists of trial numbers (e.g. {{3: [0, 7]}}), got {blocks!r}",
            )
        for block, trials in blocks.items():
            if not _whole(block) or int(block) < 0:
                raise FieldError(f"{key}.{session}", f"has block {block!r}; block numbers are whole numbers")
            if not isinstance(trials, list) or not all(_whole(t) and int(t) >= 0 for t in trials):
                raise FieldError(
                    f"{key}.{session}.{block}",
                    f"must be a list of trial numbers (whole numbers, e.g. [0, 7]), got {trials!r}",
                )


DATA_CACHE_DEFAULT = "~/.cache/spotrun/data"
# The Deep Learning AMI mounts the instance store here on instances that have one: local NVMe,
# faster than the root EBS volume and not billed per GB.
NVME_MOUNT = "/opt/dlami/nvme"


@dataclass
class InputNetworkConfig:
    n_input_layers: int = checked(1, Range(0))
    input_layer_sizes: list[int] = checked(default_factory=lambda: [512], check=each(Range(1)))
    input_trainable: bool = True
    input_layer_dropout: float = checked(0.2, FRACTION)


@dataclass
class ModelConfig:
    n_input_features: int = checked(512, Range(1, why="channels per time bin"))
    n_units: int = checked(768, Range(1))
    rnn_dropout: float = checked(0.4, FRACTION)
    rnn_trainable: bool = True
    n_layers: int = checked(5, Range(1))
    patch_size: int = checked(14, Range(0, why="0 turns patching off"))
    patch_stride: int = checked(4, Range(1))
    input_network: InputNetworkConfig = field(default_factory=InputNetworkConfig)


@dataclass
class TransformsConfig:
    white_noise_std: float = checked(1.0, Range(0))
    constant_offset_std: float = checked(0.2, Range(0))
    random_walk_std: float = checked(0.0, Range(0))
    random_walk_axis: int = checked(-1, Range(-3, 2, why="an axis of (batch, time, channel)"))
    static_gain_std: float = checked(0.0, Range(0))
    random_cut: int = checked(3, Range(0, why="cuts of 0..random_cut-1 bins; 0 or 1: off"))
    smooth_kernel_size: int = checked(100, Range(1))
    smooth_data: bool = True
    smooth_kernel_std: float = checked(2.0, Range(above=0))


@dataclass
class DatasetConfig:
    data_transforms: TransformsConfig = field(default_factory=TransformsConfig)
    neural_dim: int = checked(512, Range(1))
    batch_size: int = checked(64, Range(1))
    n_classes: int = checked(41, Range(2, why="the CTC blank and at least one phoneme"))
    max_seq_elements: int = checked(500, Range(1))
    days_per_batch: int = checked(4, Range(1))
    seed: int = checked(1, SEED)
    num_dataloader_workers: int = checked(4, Range(0, 256, why="0 reads in the training process"))
    loader_shuffle: bool = False
    must_include_days: list[int] | None = None  # session indices: checked against sessions
    test_percentage: float = checked(0.1, Range(0, 1))
    feature_subset: list[int] | None = checked(None, each(Range(0)))
    # A local folder or s3://bucket/prefix holding one subfolder per session.
    dataset_dir: str = checked("../data/hdf5_data_final", s3_field)
    # {session: {block_num: [trial_num, ...]}} trials to leave out.
    bad_trials_dict: dict[str, Any] | None = checked(None, bad_trials_shape)
    sessions: list[str] = field(default_factory=list)
    dataset_probability_val: list[float] = checked(default_factory=list, check=each(Range(0, 1)))
    # --- spotrun additions ---
    # Where the S3 trial index is cached (keyed by ETag and size); ~ is expanded.
    index_cache_dir: str = "~/.cache/spotrun/trial_index"
    # Concurrent ranged GETs per batch on the S3 index path.
    s3_max_concurrency: int = checked(16, Range(1, 256))
    # S3 datasets: whole copies of the files are kept here (keyed by bucket/key, ETag and size) and
    # filled in the background, so each byte leaves S3 once per machine. The default moves to the
    # NVMe instance store (/opt/dlami/nvme) where the AMI mounts one; null turns the cache off.
    cache_dir: str | None = DATA_CACHE_DEFAULT
    # Most GB the cache may hold; null: whatever fits leaving 10% of the disk free.
    cache_max_gb: float | None = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    gpu_number: str = "0"
    mode: str = "train"
    use_amp: bool = True
    output_dir: str = checked("trained_models/baseline_rnn", s3_field)
    checkpoint_dir: str = checked("trained_models/baseline_rnn/checkpoint", s3_field)
    init_from_checkpoint: bool = False
    init_checkpoint_path: str | None = checked(None, s3_field)
    save_best_checkpoint: bool = True
    save_all_val_steps: bool = False
    save_final_model: bool = False
    save_val_metrics: bool = True
    early_stopping: bool = False
    early_stopping_val_steps: int = checked(20, Range(1))
    num_training_batches: int = checked(120_000, Range(1))
    lr_scheduler_type: Literal["cosine", "linear"] = "cosine"
    lr_max: float = checked(0.005, Range(0))
    lr_min: float = checked(0.0001, Range(0))
    lr_decay_steps: int = checked(120_000, Range(0))
    lr_warmup_steps: int = checked(1000, Range(0))
    lr_max_day: float = checked(0.005, Range(0))
    lr_min_day: float = checked(0.0001, Range(0))
    lr_decay_steps_day: int = checked(120_000, Range(0))
    lr_warmup_steps_day: int = checked(1000, Range(0))
    beta0: float = checked(0.9, below_one)
    beta1: float = checked(0.999, below_one)
    epsilon: float = checked(0.1, Range(0))
    weight_decay: float = checked(0.001, Range(0))
    weight_decay_day: float = checked(0.0, Range(0))
    seed: int = checked(10, SEED)
    grad_norm_clip_value: float = checked(10.0, Range(0, why="0 turns clipping off"))
    batches_per_train_log: int = checked(200, Range(1))
    batches_per_val_step: int = checked(2000, Range(1))
    # 0 (the reference value): save `last` at each validation step and at exit only.
    batches_per_save: int = checked(0, Range(0, why="0 saves at each validation"))
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
    num_threads: int = checked(0, Range(0, 1024, why="0 leaves torch's default"))
    # Batches with a non-finite loss or gradient norm that may be skipped (weights unchanged) before
    # the run stops; 0: stop at the first one, saving nothing from it.
    max_nonfinite_batches: int = checked(0, Range(0))
    # On a spot instance the first save + upload of last.pt is timed against the two-minute notice
    # (ml/notice_fit.py); when it takes more than half, later saves are staged here: the NVMe
    # instance store (used only when mounted there), or a local folder you name; null: never move.
    checkpoint_nvme_dir: str | None = NVME_MOUNT

    def __post_init__(self) -> None:
        check_fields(self)
        ds = self.dataset
        if ds.dataset_probability_val and len(ds.dataset_probability_val) != len(ds.sessions):
            raise ConfigError(
                f"dataset.dataset_probability_val has {len(ds.dataset_probability_val)} entries "
                f"but dataset.sessions has {len(ds.sessions)}; give one per session"
            )
        unknown = [s for s in ds.bad_trials_dict or {} if s not in ds.sessions]
        if unknown:
            raise FieldError(
                "dataset.bad_trials_dict",
                f"names session {unknown[0]!r}, which is not in dataset.sessions (so it would leave "
                "nothing out)",
            )
        if self.init_checkpoint_path in ("None", "none", ""):
            # The reference file writes the string None.
            self.init_checkpoint_path = None

    @property
    def n_features(self) -> int:
        """Features the model sees: the subset's size when one is set."""
        subset = self.dataset.feature_subset
        return len(subset) if subset else self.model.n_input_features


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    try:
        return load_config(TrainConfig, path, overrides)
    except FieldError as e:
        raise blame_field(e, path, overrides) from e
