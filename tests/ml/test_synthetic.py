"""The synthetic writer: the release's schema exactly, session 0 train-only, unlabelled test files,
contiguous features (the index path's fast case)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from ml.data.synthetic import SIL, reference_sessions

ROOT = Path(__file__).resolve().parents[2]


def test_schema(synthetic_data):
    names = reference_sessions()[:4]
    assert sorted(p.name for p in synthetic_data.iterdir()) == names
    assert [p.name for p in (synthetic_data / names[0]).iterdir()] == ["data_train.hdf5"]
    for session in names[1:]:
        assert sorted(p.name for p in (synthetic_data / session).iterdir()) == [
            "data_test.hdf5",
            "data_train.hdf5",
            "data_val.hdf5",
        ]
    with h5py.File(synthetic_data / names[1] / "data_train.hdf5") as f:
        assert sorted(f) == [f"trial_{i:04d}" for i in range(24)]
        for name in f:
            g = f[name]
            x = g["input_features"]
            assert x.dtype == np.float32 and x.shape[1] == 512 and 40 <= x.shape[0] <= 250
            assert x.chunks is None and x.compression is None and x.id.get_offset() is not None
            assert g.attrs["n_time_steps"] == x.shape[0] and g.attrs["session"] == names[1]
            seq, text = g["seq_class_ids"][()], g["transcription"][()]
            assert seq.shape == text.shape == (500,) and seq.dtype == text.dtype == np.int32
            n = int(g.attrs["seq_len"])
            assert seq[n - 1] == SIL and np.all(seq[n:] == 0) and np.all((seq[:n] >= 1) & (seq[:n] <= SIL))
            sentence = g.attrs["sentence_label"]
            assert "".join(map(chr, text[: len(sentence)])) == sentence and text[len(sentence)] == 0
            assert sentence.count(" ") + 1 == int(np.sum(seq[:n] == SIL))  # one SIL per word
            assert {"block_num", "trial_num"} <= set(g.attrs)
    with h5py.File(synthetic_data / names[1] / "data_test.hdf5") as f:
        g = f["trial_0000"]
        assert set(g) == {"input_features"}
        assert not {"seq_len", "sentence_label"} & set(g.attrs)


def test_script(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_synthetic_data.py"),
            "--out",
            str(tmp_path / "d"),
            "--sessions",
            "2",
            "--trials",
            "8",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.startswith(f"wrote 4 files, 24 trials to {tmp_path / 'd'}")
    assert (tmp_path / "d" / "t15.2023.08.13" / "data_val.hdf5").is_file()
