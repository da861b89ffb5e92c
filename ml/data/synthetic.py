"""Synthetic Brain-to-Text data: the release's exact HDF5 schema, with structure a small GRU can
learn, but not trivially.

Each sentence is a few made-up words; each word is 2-4 phonemes (ids 1..39) followed by SIL (40),
as in the release. What makes it a task rather than a lookup:

- Confusable phonemes: each phoneme is a point in a small latent space (``_LATENT`` dims), drawn
  around one of a few cluster centres, so phonemes of a cluster differ by little. The latent is
  projected onto the 512 channels through a fixed random map and scaled well below the noise.
- Variable durations: each phoneme has its own typical length (short consonants, long vowels) and
  every utterance of it is stretched or squeezed around that, with coarticulated transitions.
- Variability per utterance: the latent is jittered and the whole trial's signal gain varies.
- Per-session drift: each session applies its own channel gain, offset and channel mixing and
  shifts every phoneme's latent a little (what the per-session input layers exist to absorb).
- Noise: white noise per element plus a slow random-walk baseline per channel.

Session 0 has only a train file, like t15.2023.08.11 in the release; test files carry no labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

from ml.data.trials import group_name

N_FEATURES = 512
LABEL_LEN = 500
SIL = 40
PHONEMES = (
    "BLANK AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH "
    "UW V W Y Z ZH SIL"
).split()
# A root attribute on every file written here: the writer recognises its own files (and may
# rewrite them) and refuses to overwrite a real dataset's (common/guard.py).
GENERATOR = "spotrun synthetic"
_REFERENCE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "rnn_args.yaml"
_VOCAB = 40
_LATENT = 16  # dimensions of the phoneme space
_CLUSTERS = 8  # phonemes sharing a cluster are the confusable ones
_WITHIN = 0.35  # spread of phonemes around their cluster centre (centres have spread 1)
_JITTER = 0.5  # per-utterance latent jitter
_SESSION_SHIFT = 0.25  # per-session shift of every phoneme's latent
_SIGNAL = 0.3  # signal scale per channel against white noise of std 1
_MEAN_HOLD = (4, 9)  # range of the phonemes' typical lengths in 20 ms bins
_HOLD = (3, 11)  # bounds of one utterance's length; with ~20 phonemes at most, trials stay <= 250 bins
_LEAD = (4, 10)  # rest before and after the sentence
_MIN_BINS = 48
_DRIFT_STD = 0.03  # per-bin step of the random-walk baseline


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


@dataclass(frozen=True)
class _Session:
    """One session's view of the phonemes: its latent shift, channel mixing, gain and offset."""

    latents: np.ndarray  # (SIL + 1, _LATENT), row 0 (rest) zero
    projection: np.ndarray  # (_LATENT, N_FEATURES): latent -> channels, drift mixing included
    gain: np.ndarray
    offset: np.ndarray


def _phoneme_space(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every phoneme's latent (clustered, so some are confusable), its typical length, and the
    latent-to-channel map shared by all sessions."""
    centres = rng.normal(0.0, 1.0, (_CLUSTERS, _LATENT))
    cluster = rng.integers(0, _CLUSTERS, SIL + 1)
    latents = centres[cluster] + rng.normal(0.0, _WITHIN, (SIL + 1, _LATENT))
    latents[0] = 0.0  # rest between trials
    mean_hold = rng.uniform(_MEAN_HOLD[0], _MEAN_HOLD[1], SIL + 1)
    projection = rng.normal(0.0, 1.0 / np.sqrt(_LATENT), (_LATENT, N_FEATURES))
    return latents, mean_hold, projection


def _session(srng: np.random.Generator, latents: np.ndarray, projection: np.ndarray) -> _Session:
    shifted = latents + srng.normal(0.0, _SESSION_SHIFT, latents.shape)
    shifted[0] = 0.0
    mix = np.eye(N_FEATURES) + srng.normal(0.0, 0.3 / np.sqrt(N_FEATURES), (N_FEATURES, N_FEATURES))
    return _Session(
        shifted, projection @ mix, srng.uniform(0.6, 1.4, N_FEATURES), srng.normal(0.0, 0.5, N_FEATURES)
    )


def _render(rng: np.random.Generator, ids: list[int], mean_hold: np.ndarray, sess: _Session) -> np.ndarray:
    holds = np.clip(np.rint(mean_hold[ids] * rng.uniform(0.6, 1.4, len(ids))), *_HOLD).astype(int)
    lead, tail = (int(v) for v in rng.integers(_LEAD[0], _LEAD[1] + 1, size=2))
    # Enough bins for CTC after patching (14/4) and a random cut: ~4 bins per label and repeat.
    repeats = sum(a == b for a, b in zip(ids, ids[1:], strict=False))
    need = max(_MIN_BINS, 4 * (len(ids) + repeats + 2) + 14)
    tail = max(tail, need - lead - int(holds.sum()))
    utterance = sess.latents[ids] + rng.normal(0.0, _JITTER, (len(ids), _LATENT))
    latent = np.concatenate(
        [np.zeros((lead, _LATENT)), np.repeat(utterance, holds, axis=0), np.zeros((tail, _LATENT))]
    )
    # Coarticulation: each bin blends into its neighbours.
    kernel = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    latent = np.stack([np.convolve(latent[:, k], kernel, mode="same") for k in range(_LATENT)], axis=1)
    signal = (latent @ sess.projection) * (_SIGNAL * rng.uniform(0.7, 1.3))
    drift = np.cumsum(rng.normal(0.0, _DRIFT_STD, (len(latent), N_FEATURES)), axis=0)
    x = signal * sess.gain + sess.offset + drift + rng.normal(0.0, 1.0, signal.shape)
    return x.astype(np.float32)


def _write_file(path: Path, session: str, trials: list[dict], labels: bool) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["generator"] = GENERATOR
        for i, t in enumerate(trials):
            g = f.create_group(group_name(i))
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


def made_here(path: Path) -> bool:
    """True for an HDF5 file this module wrote (its root ``generator`` attribute)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("generator") == GENERATOR
    except (OSError, ValueError):  # not HDF5 at all: certainly not ours
        return False


def planned_files(out: str | os.PathLike, n_sessions: int) -> list[Path]:
    """The files ``write_synthetic(out, n_sessions, ...)`` writes (and would replace)."""
    files = []
    for s_idx, session in enumerate(reference_sessions()[:n_sessions]):
        kinds = ["data_train.hdf5"] + (["data_val.hdf5", "data_test.hdf5"] if s_idx else [])
        files += [Path(out) / session / k for k in kinds]
    return files


def write_synthetic(
    out: str | os.PathLike, n_sessions: int = 4, n_trials: int = 96, seed: int = 0
) -> SyntheticSummary:
    """Write ``n_sessions`` sessions (train: n_trials, val/test: a quarter each, at least 4)."""
    names = reference_sessions()[:n_sessions]
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    latents, mean_hold, projection = _phoneme_space(rng)
    out = Path(out)
    written = []
    for s_idx, session in enumerate(names):
        srng = np.random.default_rng([seed, s_idx])
        sess = _session(srng, latents, projection)
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
                feats = _render(srng, ids, mean_hold, sess)
                # Blocks of 20 trials, trial_num counting from 0 within each block.
                trials.append(
                    {"features": feats, "ids": ids, "text": text, "block": block + i // 20, "trial": i % 20}
                )
            block += (count + 19) // 20
            _write_file(folder / fname, session, trials, labels)
            written.append((session, fname, count))
    return SyntheticSummary(out, written)
