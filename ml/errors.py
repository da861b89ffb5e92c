"""Expected failures of the trainer: each names the file or key and the next step."""

from __future__ import annotations

from common.errors import STOPPED_RESUMABLE, UNEXPECTED_EXIT, ConfigError, OutputError, ToolkitError

__all__ = [
    "ToolkitError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "NonFiniteError",
    "OutputError",
    "STOPPED_RESUMABLE",
    "UNEXPECTED_EXIT",
]


class DataError(ToolkitError):
    """The dataset cannot be read as configured (missing session, bad file, wrong shape, S3)."""

    exit_code = 3


class CheckpointError(ToolkitError):
    """A checkpoint cannot be read, written or resumed from."""

    exit_code = 4


class NonFiniteError(ToolkitError):
    """Training produced a non-finite loss or gradient norm; nothing from that step was saved."""

    exit_code = 5
