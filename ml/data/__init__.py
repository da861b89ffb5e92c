"""The trainer's data path: local or S3 HDF5 sessions, trial index, batches.

from ml.data import build_train_loader, build_val_loader
"""

from ml.data.loader import build_eval_loader, build_train_loader, build_val_loader

__all__ = ["build_eval_loader", "build_train_loader", "build_val_loader"]
