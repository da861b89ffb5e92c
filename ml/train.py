"""Train the Brain-to-Text GRU/CTC decoder: the command line.

    python -m ml.train --config configs/demo.yaml [dotted.key=value ...]
    torchrun --nproc_per_node 2 -m ml.train --config ... (data-parallel; see ml/distributed.py)

The loop itself is ml/trainer.py. Here, before torch is imported, the run's inputs that need no
torch are checked: the config, where the run will write (output_dir, a local checkpoint_dir) and
the checkpoint folder (its bucket reachable; resume=never not over an existing run). Importing
torch takes seconds (2-3 s on a laptop's CPU build, more for a CUDA build on a cold disk), so a
typo in a path is refused at once instead of after that wait.

Expected failures (bad config, data or checkpoint) print one ``error:`` line and exit with their
code, having written nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import exits, outputs
from common.errors import ConfigError
from common.s3uri import is_s3
from ml import ranks
from ml.ckpt_store import CheckpointStore
from ml.config import TrainConfig, load_train_config
from ml.errors import CheckpointError


def check_outputs(cfg: TrainConfig, d: ranks.Dist) -> None:
    """Where the run will write, and the checkpoint folder it resumes from or starts in: refused
    here with one line each, before torch is imported and before anything is written."""
    if is_s3(cfg.output_dir):
        raise ConfigError(
            "output_dir must be a local folder (logs, metrics); put checkpoints in S3 with "
            "checkpoint_dir=s3://bucket/prefix"
        )
    store = CheckpointStore(cfg.checkpoint_dir, Path(cfg.output_dir) / ".checkpoint_staging")
    if d.is_main:  # only rank 0 writes
        outputs.folder(cfg.output_dir, "output_dir")
        if not store.remote:
            outputs.folder(cfg.checkpoint_dir, "checkpoint_dir")
    store.check()
    if cfg.resume == "never" and (found := store.existing()):
        raise CheckpointError(
            f"checkpoint_dir {store.uri} already holds {', '.join(found)} and resume=never would "
            "overwrite it; set resume=auto to continue that run, or choose another checkpoint_dir"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ml.train", description="Train the GRU/CTC decoder.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="override config values")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Expected failures: one ``error:`` line and their exit code (SPOTRUN_DEBUG=1 prints their
    chained causes above it); a second Ctrl-C (the first asked for a graceful stop): exit 130; a
    bug: its traceback and a request to report it (exit 70). See common/exits.py."""
    args = parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
        check_outputs(cfg, ranks.from_env())
        from ml import trainer  # torch: only once the inputs above are known to be usable

        return trainer.train(cfg)
    except (Exception, KeyboardInterrupt) as e:  # the edge of the program
        return exits.report(e)


if __name__ == "__main__":
    sys.exit(main())
