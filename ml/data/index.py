"""The trial index of one HDF5 file: every trial's labels, and where its features lie in the file.

Built once by reading the file's small parts through h5py (over s3fs with a block cache for S3),
then cached locally as a small .npz keyed by the object's identity (S3: URI, ETag and size;
local: path, size and mtime), so later runs read only the features. With each trial's
``input_features`` contiguous and uncompressed (as in the release), a trial is one ranged read
at ``offsets[i]`` of ``nbytes[i]`` bytes; otherwise ``contiguous`` is False and readers fall back
to h5py.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.atomic import atomic_path
from common.s3uri import split_s3
from ml.data.attrs import int_attr, text_attr
from ml.data.storage import INDEX_FORMAT, S3_ERRORS, FileRef, open_h5, read_failure, s3_client
from ml.data.trials import trial_numbers
from ml.errors import DataError

LABEL_LEN = 500
# Bump (in ml.data.storage) when the cached layout changes, so old cache files and the indexes stored
# in S3 are ignored rather than misread.
_FORMAT = INDEX_FORMAT


@dataclass
class TrialIndex:
    uri: str
    dtype: str  # numpy dtype string of input_features, e.g. '<f4'
    n_features: int
    contiguous: bool  # every trial's features are one uncompressed contiguous extent
    offsets: np.ndarray  # int64 (N,), -1 where not contiguous
    nbytes: np.ndarray  # int64 (N,)
    rows: np.ndarray  # int64 (N,): time bins (input_features.shape[0])
    seq_len: np.ndarray  # int64 (N,), 0 without labels
    block_num: np.ndarray  # int64 (N,)
    trial_num: np.ndarray  # int64 (N,)
    seq_class_ids: np.ndarray  # int32 (N, 500), zeros without labels
    transcription: np.ndarray  # int32 (N, 500)
    sentence_label: np.ndarray  # str (N,)

    def __len__(self) -> int:
        return len(self.rows)


def load_index(ref: FileRef, cache_dir: str | Path, local: str | None = None) -> TrialIndex:
    """The file's index: from the local index cache; else the copy `fab data-push` stored beside
    the file in S3 (one small GET); else built from the file (from ``local``, a complete local copy
    of an S3 file, when given) and cached."""
    path = cache_path(ref, cache_dir)
    if path.is_file():
        try:
            return _load(path, ref.uri)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache file is rebuilt, not fatal
    index = _stored(ref) if ref.index_uri else None
    if index is None:
        index = build_index(ref, local)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            _save(f, index)
    except OSError:
        pass  # an unwritable cache only costs a rebuild next time
    return index


def cache_path(ref: FileRef, cache_dir: str | Path) -> Path:
    ident = f"{_FORMAT}|{ref.uri}|{ref.size}|{ref.version}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "/".join(ref.uri.rstrip("/").split("/")[-2:]))
    return Path(cache_dir).expanduser() / f"{stem}-{digest}.npz"


def build_index(ref: FileRef, local: str | None = None) -> TrialIndex:
    """Read the index from the file: ``local`` (a complete copy of ``ref``) when given, else
    ``ref`` itself (h5py over s3fs for S3)."""
    source = FileRef(local, ref.size, ref.version) if local else ref
    try:
        with open_h5(source) as f:
            return _build(f, ref.uri)
    except DataError:
        raise
    except S3_ERRORS as e:
        raise read_failure(e, ref, "its trial index") from None


def index_bytes(index: TrialIndex) -> bytes:
    """The index as stored beside its file in S3 (the .npz of the local index cache)."""
    buf = io.BytesIO()
    _save(buf, index)
    return buf.getvalue()


def _stored(ref: FileRef) -> TrialIndex | None:
    """The index stored beside ``ref`` in S3, or None when it cannot be read (then it is built)."""
    bucket, key = split_s3(ref.index_uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return _load(io.BytesIO(body), ref.uri)
    except (*S3_ERRORS, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _labels(g: h5py.Group, name: str) -> np.ndarray:
    out = np.zeros(LABEL_LEN, np.int32)
    if name in g:
        values = np.asarray(g[name][()]).reshape(-1)[:LABEL_LEN]
        out[: len(values)] = values
    return out


def _build(f: h5py.File, uri: str) -> TrialIndex:
    names = trial_numbers(f.keys(), uri)
    n = len(names)
    keys = ("offsets", "nbytes", "rows", "seq_len", "block_num", "trial_num")
    ints = {k: np.zeros(n, np.int64) for k in keys}
    seq = np.zeros((n, LABEL_LEN), np.int32)
    text = np.zeros((n, LABEL_LEN), np.int32)
    sentences: list[str] = []
    dtype, n_features, contiguous = None, None, True
    for i, name in enumerate(names):
        g = f[name]
        dset = g.get("input_features") if isinstance(g, h5py.Group) else None
        if not isinstance(dset, h5py.Dataset):
            raise DataError(
                f"{uri}: {name} has no input_features dataset; check the file is a Brain-to-Text data file"
            )
        if dset.ndim != 2:
            raise DataError(f"{uri}: {name}/input_features has shape {dset.shape}, expected (time, features)")
        if n_features is None:
            dtype, n_features = dset.dtype, dset.shape[1]
        elif dset.shape[1] != n_features or dset.dtype != dtype:
            raise DataError(
                f"{uri}: {name}/input_features is {dset.shape[1]} x {dset.dtype}, other trials "
                f"{n_features} x {dtype}; the file is inconsistent"
            )
        offset = dset.id.get_offset()
        expected = dset.shape[0] * dset.shape[1] * dset.dtype.itemsize
        if dset.chunks is None and offset is not None and dset.id.get_storage_size() == expected:
            ints["offsets"][i] = offset
        else:
            ints["offsets"][i] = -1
            contiguous = False
        ints["nbytes"][i] = expected
        ints["rows"][i] = dset.shape[0]
        attrs = g.attrs
        where = f"{uri}: {name}"
        ints["seq_len"][i] = int_attr(attrs, "seq_len", where, high=LABEL_LEN)
        ints["block_num"][i] = int_attr(attrs, "block_num", where)
        ints["trial_num"][i] = int_attr(attrs, "trial_num", where)
        seq[i] = _labels(g, "seq_class_ids")
        text[i] = _labels(g, "transcription")
        sentences.append(text_attr(attrs, "sentence_label", where))
    return TrialIndex(
        uri,
        np.dtype(dtype).str,
        int(n_features),
        contiguous,
        seq_class_ids=seq,
        transcription=text,
        sentence_label=np.array(sentences, dtype=str),
        **ints,
    )


_ARRAYS = (
    "offsets",
    "nbytes",
    "rows",
    "seq_len",
    "block_num",
    "trial_num",
    "seq_class_ids",
    "transcription",
    "sentence_label",
)


def _save(f, index: TrialIndex) -> None:
    meta = {
        "uri": index.uri,
        "dtype": index.dtype,
        "n_features": index.n_features,
        "contiguous": index.contiguous,
    }
    np.savez(f, meta=np.array(json.dumps(meta)), **{k: getattr(index, k) for k in _ARRAYS})


def _load(path, uri: str) -> TrialIndex:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta["uri"] != uri:
            raise ValueError("cache entry for another file")
        return TrialIndex(
            uri, meta["dtype"], meta["n_features"], meta["contiguous"], **{k: z[k] for k in _ARRAYS}
        )
