"""The one place a run reports itself: log lines, metrics.csv, TensorBoard and the progress bar.

- Log lines (the reference's wording, e.g. "Train batch 200: loss: 1.23 grad norm: 4.56 time:
  0.123") go to ``output_dir/training_log`` and stdout; flushed per line so `fab logs` follows.
- ``output_dir/metrics.csv``: ``step,split,loss,per,lr,seconds`` (split train|val; per empty on
  train rows; seconds since this process started training). On resume, rows at or after the
  resumed step (written after the checkpoint, then lost with the crash) are dropped first.
- TensorBoard scalars in ``output_dir/tensorboard``.
- A tqdm bar with loss, PER and batches/s.

Only rank 0 reports; on other ranks every method is a no-op.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

from tqdm import tqdm

from common.atomic import atomic_write_text

CSV_HEADER = ["step", "split", "loss", "per", "lr", "seconds"]


class RunLog:
    def __init__(self, output_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.out = Path(output_dir)
        self.started = time.monotonic()
        self._file = None
        self._csv = None
        self._tb = None
        self._bar = None

    def open(self, start_step: int, total_steps: int, progress_bar: bool) -> None:
        """Open the files (called once the config, checkpoint and data all checked out, so a bad
        input never leaves a half-written run folder behind)."""
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out / "training_log", "a", buffering=1)
        self._csv = self._open_csv(self.out / "metrics.csv", start_step)
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run starts

        self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step or None)
        if progress_bar:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="batch",
                dynamic_ncols=True,
                file=sys.stdout,
                mininterval=1.0,
            )
        self.started = time.monotonic()

    @staticmethod
    def _open_csv(path: Path, start_step: int):
        if path.exists():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == CSV_HEADER:
                kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < start_step]
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerows([CSV_HEADER, *kept])
                atomic_write_text(path, buf.getvalue())
                return open(path, "a", newline="", buffering=1)
        f = open(path, "w", newline="", buffering=1)
        f.write(",".join(CSV_HEADER) + "\n")
        return f

    def info(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")

    def train(self, step: int, loss: float, grad_norm: float, lr: float, batch_seconds: float) -> None:
        if not self.enabled:
            return
        self.info(
            f"Train batch {step}: loss: {loss:.2f} grad norm: {grad_norm:.2f} time: {batch_seconds:.3f}"
        )
        self._row(step, "train", loss, None, lr)
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/grad_norm", grad_norm, step)
            self._tb.add_scalar("train/lr", lr, step)

    def val(self, step: int, per: float, loss: float, lr: float, per_day: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        self.info(f"Val batch {step}: PER (avg): {per:.4f} CTC Loss (avg): {loss:.4f}")
        for session, day_per in (per_day or {}).items():
            self.info(f"{session} val PER: {day_per:0.4f}")
        self._row(step, "val", loss, per, lr)
        if self._tb is not None:
            self._tb.add_scalar("val/PER", per, step)
            self._tb.add_scalar("val/loss", loss, step)
            for session, day_per in (per_day or {}).items():
                self._tb.add_scalar(f"val_PER/{session}", day_per, step)

    def progress(self, loss: float | None, per: float | None) -> None:
        """Advance the bar one batch; ``loss`` (when given: at log steps, to avoid a device sync
        every step) and the latest validation PER are shown beside the batches/s."""
        if self._bar is not None:
            if loss is not None:
                text = f"loss {loss:.3f}" + (f", PER {per:.3f}" if per is not None else "")
                self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)

    def _row(self, step: int, split: str, loss: float, per: float | None, lr: float) -> None:
        if self._csv is not None:
            seconds = time.monotonic() - self.started
            per_text = "" if per is None else f"{per:.6f}"
            self._csv.write(f"{step},{split},{loss:.6f},{per_text},{lr:.8g},{seconds:.2f}\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for handle in (self._csv, self._file):
            if handle is not None:
                handle.close()
        self._csv = self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
