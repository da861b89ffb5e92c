"""Expected failures of the trainer: each names the file or key and the next step."""

from __future__ import annotations

from common.errors import ConfigError, ToolkitError

__all__ = ["ToolkitError", "ConfigError", "DataError", "CheckpointError", "STOPPED_RESUMABLE"]

# Exit code of `python -m ml.train` after SIGTERM/SIGUSR1: the checkpoint is saved (and copied
# up) and `resume: auto` continues from it. Distinct from 0 (finished) and 1/2 (failed).
STOPPED_RESUMABLE = 75


class DataError(ToolkitError):
    """The dataset cannot be read as configured (missing session, bad file, wrong shape, S3)."""

    exit_code = 3


class CheckpointError(ToolkitError):
    """A checkpoint cannot be read, written or resumed from."""

    exit_code = 4
