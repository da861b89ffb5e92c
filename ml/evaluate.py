"""Score a checkpoint on a held-out split: phoneme error rate, one CSV row per trial, a chart.

    python -m ml.evaluate --checkpoint trained_models/demo/checkpoint/best.pt --split val \\
        --config configs/demo.yaml [dotted.key=value ...] [--out eval.csv] [--force]

The checkpoint is best.pt, last.pt or a reference best_checkpoint, a file or a checkpoint folder
(best.pt, else best_checkpoint, else last.pt), local or s3://. Data is read by the trainer's
reader (local or S3), on the trainer's device with its bf16 rule, and decoded by the very
function validation uses (ml.validation.decode_batch), so the val PER printed here is the
trainer's validation PER for the same weights. The test split has no labels: predictions only.

Outputs: PER overall and per session on stdout (labelled splits), a CSV (session, block, trial,
predicted phonemes, and when labelled the true phonemes and the edit distance), and beside it a
PNG bar chart of PER per session. --out is checked before the evaluation runs (a writable .csv
path, not an input); an existing --out is refused unless --force; both files are written
atomically. Those checks run before torch is imported (ml/scoring.py is the torch half), so a bad
--out or config is refused at once, not after torch's import of a few seconds.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common import exits, guard, outputs
from common.atomic import atomic_path, atomic_write_text
from common.errors import ConfigError
from common.s3uri import is_s3, looks_like_s3, s3_problem
from ml.ckpt_store import BEST, LAST, REFERENCE_BEST, CheckpointStore
from ml.config import TrainConfig, load_train_config
from ml.data.synthetic import PHONEMES
from ml.errors import CheckpointError

if TYPE_CHECKING:  # imported in run(), after the checks: it brings torch
    from ml import scoring

SPLITS = ("val", "test")
# A checkpoint folder is scored from its best weights when it has them.
PREFERRED = (BEST, REFERENCE_BEST, LAST)


def resolve_checkpoint(spec: str, staging: Path) -> tuple[Path, str]:
    """(local file, what to call it): a file, or a folder's preferred checkpoint; S3 downloaded."""
    if looks_like_s3(spec) and (problem := s3_problem(spec)):
        raise CheckpointError(f"--checkpoint {spec!r} {problem}; e.g. s3://my-bucket/ckpt/exp1/best.pt")
    if is_s3(spec):
        parent, _, name = spec.rstrip("/").rpartition("/")
        if name and parent.startswith("s3://") and (found := CheckpointStore(parent, staging).fetch(name)):
            return found, spec
        folder = CheckpointStore(spec.rstrip("/"), staging)
        for name in PREFERRED:
            if found := folder.fetch(name):
                return found, folder.where(name)
        raise CheckpointError(
            f"no checkpoint at {spec} (neither a file nor a folder holding {', '.join(PREFERRED)}); "
            "check the URI (e.g. s3://bucket/ckpt/exp1/best.pt)"
        )
    path = Path(spec).expanduser()
    if path.is_file():
        return path, str(path)
    if path.is_dir():
        for name in PREFERRED:
            if (path / name).is_file():
                return path / name, str(path / name)
        raise CheckpointError(
            f"{path} holds none of {', '.join(PREFERRED)}; point --checkpoint at a checkpoint file"
        )
    raise CheckpointError(
        f"checkpoint {path} not found; check the path (e.g. trained_models/demo/checkpoint)"
    )


def symbols(ids: list[int], n_classes: int) -> str:
    """Phoneme names for the 41-class set; plain ids otherwise (the diphone variant)."""
    if n_classes == len(PHONEMES):
        return " ".join(PHONEMES[i] for i in ids)
    return " ".join(str(i) for i in ids)


def csv_text(result: scoring.Evaluation, n_classes: int) -> str:
    labelled = result.per is not None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["session", "block", "trial", "predicted"]
    writer.writerow(head + (["true", "edit_distance"] if labelled else []))
    for r in result.rows:
        row = [r.session, r.block, r.trial, symbols(r.predicted, n_classes)]
        if labelled:
            row += [symbols(r.label or [], n_classes), "" if r.label is None else r.edits]
        writer.writerow(row)
    return out.getvalue()


def plot_per(result: scoring.Evaluation, out: Path, title: str) -> None:
    """A bar per session (PER in %), the overall PER as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on an instance or in CI
    import matplotlib.pyplot as plt

    names = list(result.per_session)
    values = [100 * result.per_session[s] for s in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.axhline(100 * result.per, color="tab:orange", label=f"overall {100 * result.per:.1f}%")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("phoneme error rate (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def outputs_for(
    out: str | None, cfg: TrainConfig, split: str, force: bool, inputs: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """The CSV and PNG paths, checked before any work (common/outputs.py): a .csv name in a
    writable folder, the chart not landing on the CSV or on an input (``inputs``: label → path),
    and existing ones refused unless --force (common/guard.py)."""
    if out is not None:
        csv_path = outputs.file(out, "--out", (".csv",))
    else:
        outputs.folder(cfg.output_dir, "output_dir")
        csv_path = Path(cfg.output_dir) / f"eval_{split}.csv"
    png_path = csv_path.with_suffix(".png")
    outputs.distinct({"--out": csv_path, "its chart": png_path, **(inputs or {})})
    guard.unless_forced(
        force,
        target="writing the evaluation",
        lost=[f"{p} (already there)" for p in (csv_path, png_path) if p.exists()],
        verb="overwrite",
        instead="choose another --out",
    )
    return csv_path, png_path


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.overrides)
    if args.split not in SPLITS:
        raise ConfigError(f"--split {args.split!r}: use val or test")
    inputs = {"--config": args.config}
    if not is_s3(args.checkpoint):
        inputs["--checkpoint"] = args.checkpoint
    csv_path, png_path = outputs_for(args.out, cfg, args.split, args.force, inputs)
    from ml import scoring  # torch: only once the outputs above are known to be usable

    local, source = resolve_checkpoint(args.checkpoint, Path(cfg.output_dir) / ".checkpoint_staging")
    model, device, recorded = scoring.load_model(cfg, local, source)
    step, recorded = recorded["step"], recorded["val_PER"]
    print(
        f"checkpoint: {source}"
        + (f" (step {step})" if step is not None else "")
        + (f", recorded val PER {float(recorded):.4f}" if recorded is not None else "")
    )
    print(f"device: {device}; data: {cfg.dataset.dataset_dir} ({args.split})")

    result = scoring.evaluate(cfg, model, args.split, device)
    if result.per is None:
        print(f"{args.split}: {len(result.rows)} trials decoded (no labels in this split: predictions only)")
    else:
        print(
            f"{args.split} PER {result.per:.4f} over {len(result.rows)} trials (CTC loss {result.loss:.4f})"
        )
        width = max(len(s) for s in result.per_session)
        for session, per in result.per_session.items():
            print(f"  {session:<{width}}  PER {per:.4f}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_path, csv_text(result, cfg.dataset.n_classes))
    print(f"wrote {csv_path}")
    if result.per is not None:
        plot_per(result, png_path, f"{args.split} PER per session: {source}")
        print(f"wrote {png_path}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ml.evaluate", description="Score a checkpoint on val or test."
    )
    p.add_argument(
        "--checkpoint", required=True, help="best.pt, last.pt, best_checkpoint, or their folder; s3:// too"
    )
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--config", required=True, help="the run's YAML config (e.g. its args.yaml)")
    p.add_argument("--out", help="CSV path (default: <output_dir>/eval_<split>.csv); the PNG goes beside it")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="override config values")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The same edge as ml.train (common/exits.py): an expected failure is one ``error:`` line and
    its exit code, a bug its traceback and exit 70."""
    args = parse_args(argv)
    try:
        return run(args)
    except (Exception, KeyboardInterrupt) as e:  # the edge of the program
        return exits.report(e)


if __name__ == "__main__":
    sys.exit(main())
