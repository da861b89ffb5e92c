"""Write a small synthetic Brain-to-Text dataset in the release's HDF5 schema.

    python scripts/make_synthetic_data.py --out data/synthetic [--sessions 4 --trials 96 --seed 0]

Session names are the first N of configs/rnn_args.yaml (session 0 has only a train file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import guard, outputs  # noqa: E402
from common.errors import ToolkitError  # noqa: E402
from ml.data.synthetic import made_here, planned_files, write_synthetic  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one `error:` line with the next step (not usage + a message)."""

    def error(self, message: str):
        print(f"error: {message}; see `python {self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="scripts/make_synthetic_data.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write (one subfolder per session)")
    p.add_argument("--sessions", type=int, default=4, help="number of sessions, 1-45 (default 4)")
    p.add_argument("--trials", type=int, default=96, help="train trials per session, 1 or more (default 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite dataset files this script did not write")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= 45:
        p.error(f"--sessions must be from 1 to 45, got {args.sessions}")
    if args.trials < 1:
        p.error(f"--trials must be 1 or more, got {args.trials}")
    out = Path(args.out)
    try:
        outputs.folder(args.out, "--out")
        # Its own earlier output may be rewritten; a real dataset's files only with --force.
        theirs = guard.foreign(planned_files(out, args.sessions), made_here)
        guard.unless_forced(
            args.force,
            target=f"--out {out}",
            lost=[f"{f.relative_to(out)} (not written by this script)" for f in theirs],
            verb="overwrite",
            instead="choose another --out",
        )
    except ToolkitError as e:  # a mistake in the command line, like the ones above: exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = write_synthetic(out, args.sessions, args.trials, args.seed)
    except OSError as e:
        print(f"error: cannot write {e.filename or out}: {e.strerror}; choose another --out", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
