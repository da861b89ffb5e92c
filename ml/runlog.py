"""The one place a run reports itself: log lines, metrics.csv, TensorBoard and the progress bar.

- Log lines (the reference's wording, e.g. "Train batch 200: loss: 1.23 grad norm: 4.56 time:
  0.123") go to ``output_dir/training_log`` and stdout; flushed per line so `fab logs` follows.
- ``output_dir/metrics.csv``: ``step,split,loss,per,lr,seconds`` (split train|val; per empty on
  train rows; seconds since this process started training). On resume, rows at or after the
  resumed step (written after the checkpoint, then lost with the crash) are dropped first.
- TensorBoard scalars in ``output_dir/tensorboard``.
- A tqdm bar with loss, PER and batches/s.

Two runs never share these files. ``output_dir/.spotrun_run`` names the run that owns them (its
checkpoint_dir). A run that does not continue that one (a fresh start, resume=never, a new
checkpoint_dir, a resume from another run's file) first moves the old training_log, metrics.csv
and tensorboard/ to ``output_dir/previous_runs/<UTC time>/`` and says so: nothing is overwritten,
and TensorBoard never shows two runs' events as one curve.

A folder that cannot be written (read-only, a file in the way, a full disk) is an OutputError
naming it, checked before training starts (common/outputs.py) and on every write.

Only rank 0 reports; on other ranks every method is a no-op.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from common.atomic import atomic_write_text
from ml.errors import OutputError

CSV_HEADER = ["step", "split", "loss", "per", "lr", "seconds"]
RUN_MARKER = ".spotrun_run"
RUN_FILES = ("training_log", "metrics.csv", "tensorboard")
PREVIOUS_RUNS = "previous_runs"


class RunLog:
    def __init__(self, output_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.out = Path(output_dir)
        self.started = time.monotonic()
        self._file = None
        self._csv = None
        self._tb = None
        self._bar = None

    def open(
        self, start_step: int, total_steps: int, progress_bar: bool, run: str = "", continuing: bool = True
    ) -> Path | None:
        """Open the files (called once the config, checkpoint and data all checked out, so a bad
        input never leaves a half-written run folder behind). ``run`` names this run (its
        checkpoint_dir); ``continuing``: it resumes from its own last.pt. Another run's files are
        moved aside first; returns where to, or None."""
        if not self.enabled:
            return None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            moved = self._set_aside_another_run(run, continuing)
            self._file = open(self.out / "training_log", "a", buffering=1)
            self._csv = self._open_csv(self.out / "metrics.csv", start_step)
        except OSError as e:
            raise self._error(e, "opening the run's logs") from e
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
        return moved

    def _set_aside_another_run(self, run: str, continuing: bool) -> Path | None:
        marker = self.out / RUN_MARKER
        owner = marker.read_text().strip() if marker.is_file() else None
        found = [name for name in RUN_FILES if (self.out / name).exists()]
        moved = None
        if found and not (continuing and owner in (None, run)):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = self.out / PREVIOUS_RUNS / stamp
            n = 1
            while moved.exists():
                n += 1
                moved = self.out / PREVIOUS_RUNS / f"{stamp}-{n}"
            moved.mkdir(parents=True)
            for name in [*found, RUN_MARKER] if owner is not None else found:
                os.replace(self.out / name, moved / name)
        if owner != run:
            atomic_write_text(marker, run + "\n")
        return moved

    def _error(self, e: OSError, doing: str) -> OutputError:
        return OutputError(
            f"output_dir {self.out}: {doing} failed ({e.strerror or e}); free space or fix the folder, "
            "then run again with resume=auto"
        )

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
        self._write(self._file, line + "\n")

    def _write(self, handle, text: str) -> None:
        if handle is not None:
            try:
                handle.write(text)
            except OSError as e:
                raise self._error(e, f"writing {Path(handle.name).name}") from e

    def record(self, line: str) -> None:
        """A line for training_log only (the error that ended the run, printed once by the caller)."""
        if self.enabled:
            self._write(self._file, line + "\n")

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
            self._write(self._csv, f"{step},{split},{loss:.6f},{per_text},{lr:.8g},{seconds:.2f}\n")

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
