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


def _rename_unpadded(path):
    """trial_0000 → trial_0, ... (what a hand-written converter often produces)."""
    with h5py.File(path, "a") as f:
        for name in [n for n in f if n.startswith("trial_")]:
            f.move(name, f"trial_{int(name[6:])}")


@pytest.mark.parametrize("compressed", [False, True], ids=["contiguous", "compressed"])
def test_unpadded_trial_names_are_refused_when_indexed(dataset, tmp_path, compressed):
    """One naming rule for the index and every reader: `trial_1` is refused up front, not indexed
    and then missed (KeyError) by the compressed-file reader, which reads `trial_0001`."""
    path = dataset / SESSIONS[1] / "data_train.hdf5"
    if compressed:  # every trial's features gzip-compressed: read through h5py by group name
        with h5py.File(path, "a") as f:
            for name in [n for n in f if n.startswith("trial_")]:
                x = f[name]["input_features"][()]
                del f[name]["input_features"]
                f[name].create_dataset("input_features", data=x, compression="gzip", chunks=True)
    _rename_unpadded(path)
    fails(
        make_cfg(dataset, tmp_path),
        rf"^{path}: trial group 'trial_0' is not named by the rule \(expected 'trial_0000'",
    )


def test_the_index_and_the_compressed_reader_agree_on_padded_names(dataset, tmp_path):
    """A compressed file named by the rule trains: the reader finds every trial the index lists."""
    import numpy as np

    from ml.data.index import build_index
    from ml.data.reader import read_trial
    from ml.data.storage import FileRef

    path = dataset / SESSIONS[1] / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        for name in [n for n in f if n.startswith("trial_")]:
            x = f[name]["input_features"][()]
            del f[name]["input_features"]
            f[name].create_dataset("input_features", data=x, compression="gzip", chunks=True)
    ref = FileRef(str(path), path.stat().st_size, "v")
    index = build_index(ref)
    assert not index.contiguous
    for i in range(len(index)):
        assert read_trial(ref, index, i).shape == (index.rows[i], 512)
    assert np.all(index.trial_num >= 0)


@pytest.mark.parametrize(
    "attr, value, says",
    [
        ("seq_len", "twelve", "attribute seq_len is 'twelve', not a whole number"),
        ("seq_len", float("nan"), "attribute seq_len is nan, not a whole number"),
        ("seq_len", 7.5, "attribute seq_len is 7.5, not a whole number"),
        ("seq_len", 501, "attribute seq_len is 501, expected 0 to 500"),
        ("block_num", -3, "attribute block_num is -3, expected 0 or more"),
        ("trial_num", float("inf"), "attribute trial_num is inf"),
        ("block_num", True, "attribute block_num is True, not a whole number"),
        ("sentence_label", 42, "attribute sentence_label is 42, not text"),
        ("sentence_label", b"\xff\xfe", "attribute sentence_label is not UTF-8 text"),
    ],
    ids=lambda v: str(v)[:12],
)
def test_a_bad_attribute_is_named_with_its_file_and_trial(dataset, tmp_path, attr, value, says):
    import numpy as np

    path = dataset / SESSIONS[3] / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        f["trial_0002"].attrs[attr] = np.bytes_(value) if isinstance(value, bytes) else value
    message = fails(make_cfg(dataset, tmp_path), rf"^{path}: trial_0002: ")
    assert says in message and "fix the file" in message
