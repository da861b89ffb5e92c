"""Synthetic Brain-to-Text data: the release's exact HDF5 schema, with structure a small GRU learns.

Each sentence is a few made-up words; each word is 2-4 phonemes (ids 1..39) followed by SIL (40),
as in the release. A phoneme is rendered as a fixed random 512-d pattern held for a few 20 ms
bins, with smoothed transitions between phonemes; each session then applies its own per-channel
gain, offset and a small channel mixing (the day-to-day drift the per-session input layers
exist for), plus white noise. Session 0 has only a train file, like t15.2023.08.11 in the
release; test files carry no labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

N_FEATURES = 512
LABEL_LEN = 500
SIL = 40
PHONEMES = (
    "BLANK AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH "
    "UW V W Y Z ZH SIL"
).split()
_REFERENCE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "rnn_args.yaml"
# Bins each phoneme is held: with patch 14 / stride 4 this leaves about two output steps per
# phoneme, enough room for CTC; trials come out about 60-250 bins long.
_HOLD = (5, 9)
_LEAD = (4, 10)
_VOCAB = 40


@dataclass(frozen=True)
class SyntheticSummary:
    out: Path
    files: list[tuple[str, str, int]]  # (session, file name, trials)

    def lines(self) -> list[str]:
        rows = [f"  {s}/{name}: {n} trials" for s, name, n in self.files]
        total = sum(n for _, _, n in self.files)
        return [f"wrote {len(self.files)} files, {total} trials to {self.out}", *rows]


def reference_sessions() -> list[str]:
    return list(yaml.safe_load(_REFERENCE_CONFIG.read_text())["dataset"]["sessions"])


def _vocabulary(rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    words = []
    for _ in range(_VOCAB):
        phones = rng.integers(1, SIL, size=int(rng.integers(2, 5))).tolist()
        words.append(("".join(PHONEMES[p].lower() for p in phones), phones))
    return words


def _sentence(rng: np.random.Generator, vocab) -> tuple[str, list[int]]:
    picks = rng.integers(0, len(vocab), size=int(rng.integers(2, 5)))
    text, ids = [], []
    for w in picks:
        spelling, phones = vocab[w]
        text.append(spelling)
        ids += [*phones, SIL]
    return " ".join(text).capitalize() + ".", ids


def _render(rng, ids, patterns, mix, gain, offset, noise_std) -> np.ndarray:
    holds = rng.integers(_HOLD[0], _HOLD[1] + 1, size=len(ids))
    lead, tail = (int(v) for v in rng.integers(_LEAD[0], _LEAD[1] + 1, size=2))
    frames = np.repeat(np.asarray(ids), holds)
    clean = np.concatenate(
        [np.zeros((lead, N_FEATURES)), patterns[frames], np.zeros((tail, N_FEATURES))]
    )
    # Smooth transitions: a short moving average across bins.
    kernel = np.array([0.25, 0.5, 0.25])
    clean = (
        kernel[0] * np.roll(clean, 1, axis=0) + kernel[1] * clean + kernel[2] * np.roll(clean, -1, axis=0)
    )
    x = (clean @ mix) * gain + offset + rng.normal(0.0, noise_std, size=clean.shape)
    return x.astype(np.float32)


def _write_file(path: Path, session: str, trials: list[dict], labels: bool) -> None:
    with h5py.File(path, "w") as f:
        for i, t in enumerate(trials):
            g = f.create_group(f"trial_{i:04d}")
            g.create_dataset("input_features", data=t["features"])
            g.attrs["n_time_steps"] = np.int64(t["features"].shape[0])
            g.attrs["session"] = session
            g.attrs["block_num"] = np.int64(t["block"])
            g.attrs["trial_num"] = np.int64(t["trial"])
            if labels:
                seq = np.zeros(LABEL_LEN, np.int32)
                seq[: len(t["ids"])] = t["ids"]
                text = np.zeros(LABEL_LEN, np.int32)
                codes = [ord(c) for c in t["text"]][:LABEL_LEN]
                text[: len(codes)] = codes
                g.create_dataset("seq_class_ids", data=seq)
                g.create_dataset("transcription", data=text)
                g.attrs["seq_len"] = np.int64(len(t["ids"]))
                g.attrs["sentence_label"] = t["text"]


def write_synthetic(
    out: str | os.PathLike, n_sessions: int = 4, n_trials: int = 96, seed: int = 0,
    noise_std: float = 0.6,
) -> SyntheticSummary:
    """Write ``n_sessions`` sessions (train: n_trials, val/test: a quarter each, at least 4)."""
    names = reference_sessions()[:n_sessions]
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    patterns = rng.normal(0.0, 1.0, size=(SIL + 1, N_FEATURES))
    patterns[0] = 0.0  # bin content between trials: rest
    out = Path(out)
    written = []
    for s_idx, session in enumerate(names):
        srng = np.random.default_rng([seed, s_idx])
        mix = np.eye(N_FEATURES) + srng.normal(0.0, 0.15 / np.sqrt(N_FEATURES), (N_FEATURES, N_FEATURES))
        gain = srng.uniform(0.7, 1.3, N_FEATURES)
        offset = srng.normal(0.0, 0.3, N_FEATURES)
        kinds = [("data_train.hdf5", n_trials, True)]
        if s_idx != 0:  # session 0 is train-only, as in the release
            small = max(4, n_trials // 4)
            kinds += [("data_val.hdf5", small, True), ("data_test.hdf5", small, False)]
        folder = out / session
        folder.mkdir(parents=True, exist_ok=True)
        block = 1
        for fname, count, labels in kinds:
            trials = []
            for i in range(count):
                text, ids = _sentence(srng, vocab)
                feats = _render(srng, ids, patterns, mix, gain, offset, noise_std)
                # Blocks of 20 trials, trial_num counting from 0 within each block.
                trials.append({"features": feats, "ids": ids, "text": text,
                               "block": block + i // 20, "trial": i % 20})
            block += (count + 19) // 20
            _write_file(folder / fname, session, trials, labels)
            written.append((session, fname, count))
    return SyntheticSummary(out, written)
