"""Write a small synthetic Brain-to-Text dataset in the release's HDF5 schema.

    python scripts/make_synthetic_data.py --out data/synthetic [--sessions 4 --trials 96 --seed 0]

Session names are the first N of configs/rnn_args.yaml (session 0 has only a train file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.data.synthetic import write_synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write (one subfolder per session)")
    p.add_argument("--sessions", type=int, default=4, help="number of sessions (default 4)")
    p.add_argument("--trials", type=int, default=96, help="train trials per session (default 96)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= 45 or args.trials < 1:
        p.error("--sessions must be 1..45 and --trials at least 1")
    summary = write_synthetic(args.out, args.sessions, args.trials, args.seed)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
