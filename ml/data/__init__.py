"""The trainer's data path: local or S3 HDF5 sessions, trial index, batches.

from ml.data import build_train_loader, build_val_loader

The loaders (ml.data.loader) need torch; the index, storage and cache modules do not, and the
laptop's `fab data-push` / `fab data-ls` use them: so the loaders are imported on first use, not
with the package (importing torch costs a `fab` command some 3 s of CPU).
"""

from __future__ import annotations

__all__ = ["build_eval_loader", "build_train_loader", "build_val_loader"]


def __getattr__(name: str):
    if name in __all__:
        from ml.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'ml.data' has no attribute {name!r}")
