"""Expected failures of the trainer: each names the file or key and the next step."""

from __future__ import annotations

from common import exits
from common.errors import ConfigError, OutputError, ToolkitError

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

# Exit code of `python -m ml.train` after SIGTERM/SIGUSR1: the checkpoint is saved (and copied
# up) and `resume: auto` continues from it. Distinct from 0 (finished) and 1/2 (failed).
STOPPED_RESUMABLE = 75
# A bug (not an expected failure): the traceback is printed with a request to report it. 70 is
# EX_SOFTWARE (common/exits.py).
UNEXPECTED_EXIT = exits.UNEXPECTED_EXIT


class DataError(ToolkitError):
    """The dataset cannot be read as configured (missing session, bad file, wrong shape, S3)."""

    exit_code = 3


class CheckpointError(ToolkitError):
    """A checkpoint cannot be read, written or resumed from."""

    exit_code = 4


class NonFiniteError(ToolkitError):
    """Training produced a non-finite loss or gradient norm; nothing from that step was saved."""

    exit_code = 5
