"""Every number in the trainer's config has a declared range, checked before anything runs; the
error names the key and where the value came from (the override as typed, or the file)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from common.checks import declared_checks
from common.config import ConfigError, load_config
from ml import config as ml_config
from ml.config import TrainConfig, load_train_config
from tests.peers.trainkit import DEMO


def _dataclasses(cls, seen=None):
    seen = seen if seen is not None else set()
    if cls in seen:
        return seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(tp):
            _dataclasses(tp, seen)
    return seen


def test_every_number_declares_a_range_and_the_defaults_pass():
    numeric = (int, float, list[int], list[float], list[int] | None, list[float] | None)
    missing = []
    for cls in _dataclasses(TrainConfig):
        hints, checks = typing.get_type_hints(cls), declared_checks(cls)
        missing += [f"{cls.__name__}.{n}" for n, tp in hints.items() if tp in numeric and n not in checks]
    # must_include_days: session indices, checked against dataset.sessions where the data is opened.
    assert missing == ["DatasetConfig.must_include_days"]
    TrainConfig()  # the defaults are in range


@pytest.mark.parametrize(
    "override, says",
    [
        ("num_training_batches=0", "num_training_batches must be 1 or more, got 0"),
        ("num_training_batches=-5", "num_training_batches must be 1 or more"),
        ("dataset.num_dataloader_workers=-1", "dataset.num_dataloader_workers must be from 0 to 256"),
        ("model.n_input_features=0", "model.n_input_features must be 1 or more"),
        ("batches_per_val_step=0", "batches_per_val_step must be 1 or more"),
        ("batches_per_train_log=0", "batches_per_train_log must be 1 or more"),
        ("dataset.batch_size=0", "dataset.batch_size must be 1 or more"),
        ("model.rnn_dropout=1.5", "model.rnn_dropout must be from 0 to 1"),
        ("beta1=1", "beta1 must be from 0 to less than 1"),
        ("lr_max=-0.1", "lr_max must be 0 or more"),
        ("lr_max=.nan", "lr_max must be a finite number"),
        ("seed=-1", "seed must be from 0 to 4294967295"),
        (
            "dataset.dataset_probability_val=[0, 1.5]",
            "dataset.dataset_probability_val[1] must be from 0 to 1",
        ),
        ("dataset.data_transforms.smooth_kernel_std=0", "smooth_kernel_std must be greater than 0"),
        ("max_nonfinite_batches=-1", "max_nonfinite_batches must be 0 or more"),
    ],
)
def test_a_value_out_of_range_names_the_override(override, says):
    with pytest.raises(ConfigError) as e:
        load_train_config(DEMO, [override])
    assert str(e.value).startswith(f"override {override!r}: ") and says in str(e.value)


def test_a_value_out_of_range_in_the_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_training_batches: 0\ndataset:\n  num_dataloader_workers: 2\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: num_training_batches must be 1 or more, got 0; edit"):
        load_train_config(bad)


def test_a_type_error_names_the_override_not_the_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_train_config(DEMO, ["num_training_batches=abc"])
    assert str(e.value) == (
        "override 'num_training_batches=abc': num_training_batches must be an integer, got 'abc'"
    )
    assert "demo.yaml" not in str(e.value)
    # The same key wrong in the file is the file's fault.
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_training_batches: abc\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: num_training_batches must be an integer"):
        load_train_config(bad, ["seed=3"])


def test_the_override_label_names_a_fab_set_flag_and_nested_overrides_are_blamed():
    with pytest.raises(ConfigError, match=r"^--set 'model=\{n_units: x\}': model.n_units must be an integer"):
        load_config(TrainConfig, DEMO, ["model={n_units: x}"], override_label="--set")
    with pytest.raises(ConfigError, match=r"^override 'model=\{n_unitz: 3\}': unknown key model.n_unitz"):
        load_train_config(DEMO, ["model={n_unitz: 3}"])


def test_exponent_without_a_dot_is_a_number():
    assert load_train_config(DEMO, ["lr_max=1e-3"]).lr_max == 0.001
    assert ml_config.TrainConfig().lr_max == 0.005


# The shape of dataset.bad_trials_dict, {session: {block_num: [trial_num, ...]}}, and its sessions:
# a wrong shape used to fail mid-run or leave nothing out, a mistyped session to leave nothing out.
@pytest.mark.parametrize(
    "value, says",
    [
        ("{t15.2099.01.01: {1: [2]}}", "names session 't15.2099.01.01', which is not in dataset.sessions"),
        ("{t15.2023.08.11: [1, 2]}", "bad_trials_dict.t15.2023.08.11 must map block numbers to lists"),
        ("{t15.2023.08.11: {1: 2}}", "bad_trials_dict.t15.2023.08.11.1 must be a list of trial numbers"),
        ("{t15.2023.08.11: {1: [two]}}", "must be a list of trial numbers (whole numbers, e.g. [0, 7]), got"),
        ("{t15.2023.08.11: {1: [1.5]}}", "must be a list of trial numbers"),
        ("{t15.2023.08.11: {b1: [2]}}", "has block 'b1'; block numbers are whole numbers"),
        ("[1, 2]", "dataset.bad_trials_dict must be a mapping"),
    ],
    ids=["unknown-session", "list-not-blocks", "int-not-list", "word", "fraction", "block-word", "list"],
)
def test_bad_trials_dict_is_checked_for_shape_and_sessions(value, says):
    override = f"dataset.bad_trials_dict={value}"
    with pytest.raises(ConfigError) as e:
        load_train_config(DEMO, [override])
    assert str(e.value).startswith(f"override {override!r}: ") and says in str(e.value)


def test_a_well_formed_bad_trials_dict_loads():
    cfg = load_train_config(
        DEMO, ["dataset.bad_trials_dict={t15.2023.08.11: {1: [2, 3]}, t15.2023.08.13: {}}"]
    )
    assert cfg.dataset.bad_trials_dict == {"t15.2023.08.11": {1: [2, 3]}, "t15.2023.08.13": {}}
