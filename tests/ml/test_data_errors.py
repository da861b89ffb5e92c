"""Bad datasets fail up front with one DataError line naming the file and the next step."""

from __future__ import annotations

import shutil

import h5py
import pytest

from ml.config import DatasetConfig, ModelConfig, TrainConfig
from ml.data import build_train_loader, build_val_loader
from ml.data.synthetic import reference_sessions
from ml.errors import DataError

SESSIONS = reference_sessions()[:4]


@pytest.fixture
def dataset(synthetic_data, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(synthetic_data, tmp_path / "ds")


def make_cfg(dataset_dir, cache, n_features=512, **ds) -> TrainConfig:
    base = dict(
        dataset_dir=str(dataset_dir),
        sessions=SESSIONS,
        dataset_probability_val=[0, 1, 1, 1],
        num_dataloader_workers=0,
        index_cache_dir=str(cache),
        batch_size=8,
        days_per_batch=2,
    )
    base.update(ds)
    return TrainConfig(
        dataset=DatasetConfig(**base), model=ModelConfig(n_input_features=n_features), num_training_batches=2
    )


def fails(cfg, pattern: str, builder=build_train_loader) -> str:
    with pytest.raises(DataError, match=pattern) as err:
        builder(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_session_folder(dataset, tmp_path):
    shutil.rmtree(dataset / SESSIONS[2])
    fails(make_cfg(dataset, tmp_path), rf"^{dataset}/{SESSIONS[2]}: session folder not found; check")


def test_missing_dataset_dir(tmp_path):
    fails(
        make_cfg(tmp_path / "nowhere", tmp_path),
        rf"^{tmp_path}/nowhere: dataset folder not found",
        build_val_loader,
    )


def test_missing_train_file(dataset, tmp_path):
    (dataset / SESSIONS[1] / "data_train.hdf5").unlink()
    fails(make_cfg(dataset, tmp_path), rf"{SESSIONS[1]}/data_train.hdf5: train file not found")


def test_file_without_input_features(dataset, tmp_path):
    path = dataset / SESSIONS[3] / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        del f["trial_0005/input_features"]
    fails(make_cfg(dataset, tmp_path), rf"^{path}: trial_0005 has no input_features dataset")


def test_feature_size_mismatch(dataset, tmp_path):
    fails(
        make_cfg(dataset, tmp_path, n_features=256),
        rf"^{dataset}/{SESSIONS[0]}/data_train.hdf5: input_features has 512 features but "
        r"model.n_input_features is 256",
    )


def test_gap_in_trial_numbering(dataset, tmp_path):
    path = dataset / SESSIONS[2] / "data_val.hdf5"
    with h5py.File(path, "a") as f:
        del f["trial_0003"]
    fails(
        make_cfg(dataset, tmp_path),
        rf"^{path}: trial numbering has a gap \(trial_0003 missing",
        build_val_loader,
    )


def test_not_an_hdf5_file(dataset, tmp_path):
    path = dataset / SESSIONS[1] / "data_train.hdf5"
    path.write_bytes(b"not hdf5 at all")
    fails(make_cfg(dataset, tmp_path), rf"^{path}: not a readable HDF5 file")


def test_bad_feature_subset(dataset, tmp_path):
    fails(make_cfg(dataset, tmp_path, feature_subset=[0, 512]), r"^dataset.feature_subset has channels")
