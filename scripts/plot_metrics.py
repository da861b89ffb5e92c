"""Draw a training run's loss and validation PER curves from its metrics.csv to a PNG.

    python scripts/plot_metrics.py PATH/metrics.csv [--out PNG]

metrics.csv is written by ml.train with the header ``step,split,loss,per,lr,seconds``; ``split`` is
``train`` or ``val`` and ``per`` is empty on train rows. The PNG defaults to metrics.png beside it.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import guard, outputs  # noqa: E402
from common.errors import ToolkitError  # noqa: E402

REQUIRED_COLUMNS = ("step", "split", "loss", "per")


class PlotError(Exception):
    """The CSV cannot be plotted; the message says which file and why."""


@dataclass
class Curves:
    train_step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    per_step: list[int] = field(default_factory=list)
    val_per: list[float] = field(default_factory=list)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_metrics(path: Path) -> Curves:
    """Train and val curves from ``path``; rows that do not parse are skipped (a run being
    written may end in a half line)."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PlotError(f"{path}: no {', '.join(missing)} column(s); is this a metrics.csv?")
            curves = Curves()
            for row in reader:
                step, loss, per = _number(row["step"]), _number(row["loss"]), _number(row["per"])
                if math.isnan(step):
                    continue
                if row["split"] == "train" and not math.isnan(loss):
                    curves.train_step.append(int(step))
                    curves.train_loss.append(loss)
                elif row["split"] == "val":
                    if not math.isnan(loss):
                        curves.val_step.append(int(step))
                        curves.val_loss.append(loss)
                    if not math.isnan(per):
                        curves.per_step.append(int(step))
                        curves.val_per.append(per)
    except FileNotFoundError:
        raise PlotError(f"{path}: no such file; pass the metrics.csv of a run") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PlotError(f"{path}: cannot read it ({exc})") from None
    if not (curves.train_step or curves.val_step or curves.per_step):
        raise PlotError(f"{path}: holds no metrics rows yet; plot again once training has logged")
    return curves


def plot(curves: Curves, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on an instance or in CI
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_per) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    if curves.train_step:
        ax_loss.plot(curves.train_step, curves.train_loss, label="train", color="tab:blue", alpha=0.8)
    if curves.val_step:
        ax_loss.plot(curves.val_step, curves.val_loss, "o-", label="val", color="tab:orange")
    losses = [v for v in curves.train_loss + curves.val_loss if v > 0]
    if losses and max(losses) / min(losses) > 20:
        ax_loss.set_yscale("log")  # CTC loss falls by orders of magnitude early; keep the tail readable
    ax_loss.set_ylabel("CTC loss")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if curves.per_step:
        ax_per.plot(curves.per_step, [p * 100 for p in curves.val_per], "o-", color="tab:green", label="val")
        best = min(range(len(curves.val_per)), key=curves.val_per.__getitem__)
        ax_per.annotate(
            f"best {curves.val_per[best] * 100:.1f}% @ {curves.per_step[best]}",
            (curves.per_step[best], curves.val_per[best] * 100),
            textcoords="offset points",
            xytext=(0, 10),
            ha="center",
        )
        ax_per.legend()
    ax_per.set_ylabel("phoneme error rate (%)")
    ax_per.set_xlabel("step")
    ax_per.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise PlotError(f"{out}: cannot write the PNG ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def drawn_here(path: Path) -> bool:
    """A PNG that matplotlib wrote (its tEXt ``Software`` chunk, in the first bytes): an earlier
    plot, which a new one may replace; any other file at --out is the user's."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00Matplotlib" in head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot loss and PER from a run's metrics.csv.")
    parser.add_argument("csv", type=Path, help="metrics.csv written by ml.train")
    parser.add_argument("--out", type=Path, help="PNG to write (default: metrics.png beside the CSV)")
    parser.add_argument("--force", action="store_true", help="overwrite an --out that is not an earlier plot")
    args = parser.parse_args(argv)
    out = args.out or args.csv.with_name("metrics.png")
    try:
        # Before reading: a PNG written over the CSV (or under a .csv name) loses the metrics.
        outputs.file(out, "--out", (".png",))
        outputs.distinct({"the metrics CSV": args.csv, "--out": out})
        guard.unless_forced(
            args.force,
            target="plotting",
            lost=[f"{p} (not a plot: no matplotlib mark)" for p in guard.foreign([out], drawn_here)],
            verb="overwrite",
            instead="choose another --out",
        )
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        curves = read_metrics(args.csv)
        plot(curves, out, title=str(args.csv.parent.name or args.csv.name))
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
