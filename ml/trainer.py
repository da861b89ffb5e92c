"""The Brain-to-Text GRU/CTC decoder's training: one loop, read top to bottom. Its command line,
and the checks of its outputs and checkpoint folder made before torch is imported, are ml/train.py.

The loop: draw the batch for this step, augment it on the device, CTC loss, clip, AdamW and
scheduler step; log every ``batches_per_train_log``; validate at batch 0, every
``batches_per_val_step`` and at the last batch (best = lower PER, ties lower loss); save ``last``
every ``batches_per_save`` batches (0: at each validation) and on exit. ``resume: auto`` continues
from checkpoint_dir's last.pt exactly where it stopped: same weights, optimizer, schedule, RNG
and batch sequence (ml/checkpoint.py).

SIGTERM or SIGUSR1 (the spot-notice watcher) finishes the current step, saves, waits for the S3
copy and exits with STOPPED_RESUMABLE (75). SIGUSR2 (the watcher, on a rebalance recommendation
with on_rebalance: checkpoint) saves last.pt at the next step boundary and trains on. On a spot
instance the first last.pt's save and upload are timed against the notice (ml/notice_fit.py).

Expected failures (bad config, data or checkpoint) raise a ToolkitError before anything is written
(ml/train.py prints it as one ``error:`` line).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import save_config
from common.errors import ConfigError
from common.s3uri import is_s3
from ml import checkpoint, distributed, memory, notice_fit, stopping
from ml.augment import transform_batch
from ml.ckpt_store import ARGS, BEST, LAST, REFERENCE_BEST, CheckpointStore
from ml.config import TrainConfig
from ml.data import build_train_loader, build_val_loader
from ml.data.storage import s3_traffic
from ml.errors import STOPPED_RESUMABLE, CheckpointError, NonFiniteError
from ml.model import build_model, count_parameters
from ml.runlog import RunLog
from ml.schedule import build_optimizer, build_scheduler
from ml.stopping import StopFlag
from ml.validation import autocast, ctc_loss, to_device, validate


def train_step(model, batch, optimizer, scheduler, cfg: TrainConfig, device: torch.device, d=None):
    """One optimizer step on a CPU batch. Returns (loss, grad_norm, finite).

    ``finite`` is False when the loss or the gradient norm is NaN or inf: the reference clips with
    ``error_if_nonfinite=True``; here the optimizer step is skipped instead (the weights and
    AdamW's moments stay as they were), and the caller decides to stop or skip the batch. The
    check costs one device sync per step, as the reference's does. The scheduler steps either way,
    so the schedule stays a function of the step.
    """
    batch = to_device(batch, device)
    # Augmentation draws from torch's global RNG on the batch's device: saved in every checkpoint.
    x, n = transform_batch(batch["input_features"], batch["n_time_steps"], cfg.dataset.data_transforms, True)
    with autocast(cfg, device):
        logits = model(x, batch["day_indices"])
    loss = ctc_loss(logits, batch, n, cfg).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.grad_norm_clip_value if cfg.grad_norm_clip_value > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))  # waits for the device
    if d is not None:
        finite = not distributed.any_true(not finite, d)  # every rank skips or stops together
    if finite:
        optimizer.step()
    scheduler.step()
    return loss.detach(), grad_norm.detach(), finite


def find_start(cfg: TrainConfig, store: CheckpointStore, d: distributed.Dist) -> tuple[dict | None, str]:
    """The checkpoint to resume from, per ``resume`` (auto | never | a path), read and checked
    (resume=never over an existing run was refused by ml.train.check_outputs)."""
    if cfg.resume == "never":
        return None, ""
    if cfg.resume == "auto":
        # The first rank of each machine fetches (it may download from S3); the machine's other
        # ranks read the same local file (a path on another node would not exist here).
        local = store.fetch_last() if d.local_rank == 0 else None
        local = distributed.from_node_leader(str(local) if local else None, d)
        source = store.where(LAST)
    else:
        source = cfg.resume
        if is_s3(source):
            parent, _, name = source.rpartition("/")
            side = CheckpointStore(parent, Path(cfg.output_dir) / ".checkpoint_staging")
            local = str(side.fetch(name)) if d.local_rank == 0 else None
            local = distributed.from_node_leader(local, d)
        else:
            local = source
    if local is None:
        return None, ""
    return checkpoint.load(local), source


def train(cfg: TrainConfig) -> int:
    """Train on ``cfg`` (its outputs and checkpoint folder checked by ml.train.check_outputs)."""
    d = distributed.from_env()
    device = distributed.pick_device(cfg.device, cfg.gpu_number, d)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    stop = StopFlag().install()
    distributed.init(d, device)
    try:
        code = _train(cfg, d, device, stop)
        stopping.report_exit(code)  # for the notice watcher; see ml/stopping.py
        distributed.barrier(d)  # no rank leaves before rank 0's checkpoint is written
        return code
    finally:
        stop.uninstall()
        distributed.shutdown(d)


@dataclass
class Run:
    """The run's fixed parts, built once before the loop (nothing here changes while it trains)."""

    cfg: TrainConfig
    d: distributed.Dist
    device: torch.device
    stop: StopFlag
    log: RunLog
    store: CheckpointStore
    raw_model: torch.nn.Module  # the weights (saved without wrapper prefixes)
    eval_model: torch.nn.Module  # raw_model, compiled when cfg.compile
    model: torch.nn.Module  # eval_model, wrapped in DDP when data-parallel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    val_loader: Any
    resumed_from: str  # the checkpoint this run continues ("" for a fresh start)
    exact: bool  # resumed from our last.pt (every RNG stream restored), not a reference file
    fit: notice_fit.FitCheck | None = None  # on spot, rank 0, S3 checkpoints: times the first save

    def lr(self) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if g.get("name", "other") == "other")


@dataclass
class RunState:
    """What the loop changes as it goes: one object, passed to the functions that change it."""

    start_step: int = 0  # the step this process started (or resumed) at
    done: int = 0  # batches trained: the next step to train
    best_per: float | None = None
    best_loss: float | None = None
    bad_val_steps: int = 0  # validations since the best (early stopping)
    last_saved: int | None = None  # `done` when last.pt was last written
    per: float | None = None  # the latest validation PER (progress bar, final checkpoint)
    stopped_by: str | None = None  # the signal's name when a signal ended the run
    t_start: float = 0.0
    data_wait: float = 0.0  # seconds spent waiting for batches
    nonfinite_batches: int = 0  # batches skipped for a non-finite loss or gradient norm


def _train(cfg: TrainConfig, d: distributed.Dist, device: torch.device, stop: StopFlag) -> int:
    # ---- check everything before writing anything: checkpoint, model, data ----
    run, state, train_loader = prepare(cfg, d, device, stop)
    total = cfg.num_training_batches

    # ---- from here on the run writes: logs, metrics, checkpoints ----
    announce(run, state)

    # ---- the loop ----
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        batches = iter(train_loader)  # starting DataLoader workers draws a seed: keep it off our stream
    state.t_start = time.monotonic()
    step_time = 0.0  # train-step seconds since the last train log line
    for step in range(state.start_step, total):
        # A signal on any rank (spot notice, Ctrl-C): stop here; finish() saves. A save asked for
        # (SIGUSR2: a rebalance recommendation) on any rank: every rank saves here, and trains on.
        stopping_now, save_now = distributed.any_true_each((stop.requested, stop.take_save()), d)
        if stopping_now:
            state.stopped_by = stop.signal_name or "signal"
            break
        if save_now:
            save_asked(run, state)

        # Draw this step's batch and train on it.
        t0 = time.monotonic()
        batch = next(batches)
        t1 = time.monotonic()
        state.data_wait += t1 - t0
        loss, grad_norm, finite = train_step(run.model, batch, run.optimizer, run.scheduler, cfg, device, d)
        state.done = step + 1
        if not finite:  # never reaches a checkpoint: stop, or skip a few when max_nonfinite_batches
            skip_or_stop(run, state, step, float(loss), float(grad_norm))

        # Log every batches_per_train_log steps (a skipped batch has said so above).
        if step % cfg.batches_per_train_log == 0 and finite:
            loss_value, norm_value = float(loss), float(grad_norm)  # waits for the device
            step_time += time.monotonic() - t1
            steps = min(cfg.batches_per_train_log, state.done - state.start_step)
            run.log.train(step, loss_value, norm_value, run.lr(), step_time / steps)
            step_time = 0.0
        else:
            step_time += time.monotonic() - t1

        # Validate (and keep the best) every batches_per_val_step steps and at the last one.
        if step % cfg.batches_per_val_step == 0 or step == total - 1:
            if not validate_and_checkpoint(run, state, step):
                break

        # Save last.pt every batches_per_save steps (0: at each validation, above).
        if (
            cfg.batches_per_save > 0
            and state.done % cfg.batches_per_save == 0
            and state.last_saved != state.done
        ):
            save_last(run, state)
        run.log.progress(float(loss) if step % cfg.batches_per_train_log == 0 and finite else None, state.per)

    # ---- exit: save, wait for the copy to S3, say how it ended ----
    return finish(run, state)


def prepare(cfg: TrainConfig, d: distributed.Dist, device: torch.device, stop: StopFlag):
    """Read the checkpoint, build model, optimizer, schedule and loaders; write nothing.
    Returns (run, state, train_loader)."""
    log = RunLog(cfg.output_dir, enabled=d.is_main)
    store = CheckpointStore(cfg.checkpoint_dir, Path(cfg.output_dir) / ".checkpoint_staging", warn=log.info)
    ckpt, resumed_from = find_start(cfg, store, d)
    # The data is opened and checked (sessions, files, labels of the held-out split) before the
    # model is built, and the model's size is checked against free memory before it is allocated:
    # neither waits on the other's cost. (Before the seeding: model init draws the same numbers.)
    val_loader = build_val_loader(cfg, d.rank, d.world_size, say=log.info)
    memory.check_fits(cfg, device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    raw_model = build_model(cfg).to(device)
    optimizer = build_optimizer(raw_model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    state, exact = RunState(), True
    if ckpt is not None:
        point = checkpoint.restore(ckpt, resumed_from, raw_model, optimizer, scheduler, d.rank, cfg.seed)
        state.start_step, state.best_per, state.best_loss = point.step, point.best_per, point.best_loss
        state.bad_val_steps, exact = point.bad_val_steps, point.exact
        state.nonfinite_batches = point.nonfinite_batches
        state.last_saved = point.step or None
        del ckpt  # its tensors were copied into the model and optimizer
    else:
        if cfg.init_from_checkpoint:
            if not cfg.init_checkpoint_path:
                raise ConfigError("init_from_checkpoint is true but init_checkpoint_path is not set")
            checkpoint.load_weights(raw_model, cfg.init_checkpoint_path)
        if d.rank > 0:  # different augmentation noise per rank; rank 0 matches a one-process run
            torch.manual_seed(cfg.seed + d.rank)
    state.done, state.per = state.start_step, state.best_per
    train_loader = build_train_loader(cfg, state.start_step, d.rank, d.world_size, say=log.info)

    eval_model = torch.compile(raw_model) if cfg.compile else raw_model
    # Validation runs outside DDP: ranks see different numbers of val batches, and a DDP forward
    # may hold collectives that every rank must join.
    model = distributed.wrap(eval_model, d, device)
    run = Run(
        cfg,
        d,
        device,
        stop,
        log,
        store,
        raw_model,
        eval_model,
        model,
        optimizer,
        scheduler,
        val_loader,
        resumed_from,
        exact,
    )
    notice_s = notice_fit.notice_seconds()
    if d.is_main and store.remote and notice_s is not None:
        run.fit = notice_fit.FitCheck(notice_s, cfg.checkpoint_nvme_dir, log.info)
    return run, state, train_loader


def announce(run: Run, state: RunState) -> None:
    """Open the run's outputs and say what is about to train, on what, from where."""
    cfg, log, store, d = run.cfg, run.log, run.store, run.d
    owner = store.uri if store.remote else str(Path(store.uri).expanduser().resolve())
    continuing = bool(run.resumed_from) and run.resumed_from == store.where(LAST)
    moved = log.open(state.start_step, cfg.num_training_batches, cfg.progress_bar, owner, continuing)
    if d.is_main:
        store.local_dir.mkdir(parents=True, exist_ok=True)
        store.clean_partial()
    threads = f", {torch.get_num_threads()} threads" if run.device.type == "cpu" else ""
    log.info(f"model: {count_parameters(run.raw_model):,} parameters")
    ddp = f"; data-parallel over {d.world_size} processes" if d.enabled else ""
    log.info(f"device: {run.device}{threads}{ddp}")
    log.info(f"data: {cfg.dataset.dataset_dir} ({len(cfg.dataset.sessions)} sessions)")
    log.info(f"checkpoints: {store.uri}" + (f" (staged in {store.local_dir})" if store.remote else ""))
    if run.fit is not None:
        log.info(
            f"spot instance: the first last.pt's save and upload will be timed against the "
            f"{run.fit.notice_s:g} s interruption notice"
        )
    if moved is not None:
        log.info(
            f"output_dir held another run's logs and metrics: moved them to {moved} (nothing overwritten)"
        )
    if run.resumed_from:
        reference = " (a reference checkpoint: no RNG states saved, so augmentation noise restarts)"
        log.info(
            f"resumed from {run.resumed_from} at step {state.start_step}" + ("" if run.exact else reference)
        )
        if state.start_step >= cfg.num_training_batches:
            log.info(
                f"nothing to train: checkpoint at step {state.start_step} of "
                f"num_training_batches={cfg.num_training_batches} "
                f"(raise num_training_batches, or remove {store.uri} to start over)"
            )
    elif cfg.init_from_checkpoint:
        log.info(f"initialised weights from {cfg.init_checkpoint_path}")


def validate_and_checkpoint(run: Run, state: RunState, step: int) -> bool:
    """Validate after ``step``; keep the best; save last.pt when batches_per_save is 0.
    Returns False when training must stop (a signal during validation, or early stopping)."""
    cfg, log, d = run.cfg, run.log, run.d
    result = validate(run.eval_model, run.val_loader, cfg, run.device, run.stop, d)
    if result is None:  # a signal arrived during validation: no best from part of the data
        state.stopped_by = run.stop.signal_name or "signal"
        return False
    if not math.isfinite(result.loss):  # the weights are broken: no best, no last from them
        stop_nonfinite(run, state, f"in the validation after step {step}: loss {result.loss:g}")
    state.per = result.per
    per_day = result.per_day if cfg.log_individual_day_val_PER else None
    log.val(step, result.per, result.loss, run.lr(), per_day)
    if state.best_per is None or (result.per, result.loss) < (state.best_per, state.best_loss):
        if d.is_main and state.best_per is not None:
            log.info(f"New best test PER {state.best_per:.4f} --> {result.per:.4f}")
        state.best_per, state.best_loss, state.bad_val_steps = result.per, result.loss, 0
        if d.is_main and cfg.save_best_checkpoint:
            log.info("Checkpointing model")
            save_best(run, state.done, result.per, result.loss)
    else:
        state.bad_val_steps += 1
    if d.is_main and cfg.save_all_val_steps:
        save_reference(run, f"checkpoint_batch_{step}", result.per, result.loss)
        run.store.publish([f"checkpoint_batch_{step}"])
    if cfg.batches_per_save == 0:
        save_last(run, state)
    if cfg.early_stopping and state.bad_val_steps >= cfg.early_stopping_val_steps:
        log.info(f"Early stopping: no better PER in {state.bad_val_steps} validation steps (batch {step})")
        return False
    return True


def skip_or_stop(run: Run, state: RunState, step: int, loss: float, grad_norm: float) -> None:
    """A step whose loss or gradient norm is not finite (its optimizer step was skipped): count it,
    or stop when more than max_nonfinite_batches (default 0) have been seen."""
    state.nonfinite_batches += 1
    limit = run.cfg.max_nonfinite_batches
    what = f"loss {loss:g}, grad norm {grad_norm:g}"
    if state.nonfinite_batches <= limit:
        run.log.info(
            f"Train batch {step}: non-finite ({what}); batch skipped, weights unchanged "
            f"({state.nonfinite_batches} of max_nonfinite_batches={limit})"
        )
        return
    stop_nonfinite(run, state, f"at step {step}: {what}; stopped before the optimizer step")


def stop_nonfinite(run: Run, state: RunState, what: str) -> None:
    """Stop with one line, saving nothing: last.pt and best.pt stay the last good ones (queued S3
    copies of them finish first)."""
    saved = ([f"last.pt (step {state.last_saved})"] if state.last_saved else []) + (
        ["best.pt"] if run.store.path(BEST).is_file() else []
    )
    kept = f"{' and '.join(saved)} in {run.store.uri} untouched" if saved else "no checkpoint saved yet"
    message = (
        f"training diverged {what}; saved nothing from it ({kept}); check the data, lower lr_max, or "
        "set max_nonfinite_batches=N to skip a few bad batches"
    )
    run.log.record(f"error: {message}")
    if run.d.is_main:
        run.store.flush()
    run.log.close()
    raise NonFiniteError(message)


def finish(run: Run, state: RunState) -> int:
    """Save last.pt (and the final reference checkpoint), wait for the S3 copy, report the run and
    return the exit code."""
    cfg, log, d = run.cfg, run.log, run.d
    done = state.done
    if state.last_saved != done:
        save_last(run, state)
    if d.is_main and state.stopped_by is None and cfg.save_final_model:
        name = f"final_checkpoint_batch_{done - 1}"
        save_reference(run, name, state.per or float("nan"), state.best_loss or float("nan"))
        run.store.publish([name])
    if d.is_main:
        run.store.flush()
    if done > state.start_step:
        log.info(end_of_run_line(state))
        if is_s3(cfg.dataset.dataset_dir):
            log.info(s3_traffic().line())  # GETs, GB and request cost (`fab run` sums these)
    log.close()
    if state.stopped_by is not None:
        if d.is_main:
            print(
                f"stopped by {state.stopped_by} at step {done}; checkpoint saved (resume with resume=auto)",
                flush=True,
            )
        return STOPPED_RESUMABLE
    return 0


def end_of_run_line(state: RunState) -> str:
    """How much was trained, how fast, and the best PER (one line; add run figures here)."""
    trained = state.done - state.start_step
    elapsed = time.monotonic() - state.t_start
    if state.best_per is None:
        line = f"trained {trained} batches in {elapsed:.1f} s"
    else:
        line = (
            f"trained {trained} batches in {elapsed:.1f} s ({trained / elapsed:.2f} batches/s, "
            f"data wait {100 * state.data_wait / elapsed:.0f}%); best val PER {state.best_per:.4f}"
        )
    if state.nonfinite_batches:
        line += f"; {state.nonfinite_batches} non-finite batches skipped (weights unchanged)"
    return line


# ---- checkpoints: last.pt (exact resume), best.pt + best_checkpoint, reference-layout copies ----


def save_last(run: Run, state: RunState) -> None:
    """last.pt at ``state.done`` with every rank's RNG streams (a collective: all ranks call it).
    Weights that are no longer finite (a finite but overflowing update) are never saved."""
    if not all(bool(torch.isfinite(p).all()) for p in run.raw_model.parameters()):
        stop_nonfinite(run, state, f"by step {state.done}: the weights hold NaN or inf")
    rngs = distributed.gather(checkpoint.rng_state(), run.d)  # every rank's stream, for exact resume
    if run.d.is_main:
        if run.fit is not None:
            run.fit.apply(run.store)  # the check found saves too slow for the notice: faster disk
        ckpt = {
            "format": checkpoint.FORMAT,
            "step": state.done,
            "model_state_dict": run.raw_model.state_dict(),
            "optimizer_state_dict": run.optimizer.state_dict(),
            "scheduler_state_dict": run.scheduler.state_dict(),
            "best_per": state.best_per,
            "best_loss": state.best_loss,
            "bad_val_steps": state.bad_val_steps,
            "nonfinite_batches": state.nonfinite_batches,
            "config": dataclasses.asdict(run.cfg),
            "world_size": run.d.world_size,
            "rng": rngs,
        }
        t0 = time.monotonic()
        checkpoint.save(ckpt, run.store.path(LAST))
        if run.fit is not None:
            run.fit.saved(run.store, LAST, time.monotonic() - t0)  # and times the upload
        save_args(run)
        run.store.publish([ARGS, LAST])
    state.last_saved = state.done


def save_asked(run: Run, state: RunState) -> None:
    """SIGUSR2 (the notice watcher, on a rebalance recommendation): last.pt now, at this step
    boundary, on every rank together (rank 0 writes); training goes on. The S3 copy runs in the
    background as for any save."""
    why = "save asked for (SIGUSR2: the spot watcher's rebalance recommendation)"
    if state.last_saved == state.done:
        run.log.info(f"{why}: last.pt already holds step {state.done}; training goes on")
        return
    save_last(run, state)
    run.log.info(f"{why}: saved last.pt at step {state.done} in {run.store.where(LAST)}; training goes on")


def save_best(run: Run, step: int, per: float, loss: float) -> None:
    # best.pt: weights and metrics only; best_checkpoint (reference layout) has the optimizer too.
    best = {
        "format": checkpoint.FORMAT,
        "step": step,
        "model_state_dict": run.raw_model.state_dict(),
        "val_PER": per,
        "val_loss": loss,
        "config": dataclasses.asdict(run.cfg),
    }
    checkpoint.save(best, run.store.path(BEST))
    save_reference(run, REFERENCE_BEST, per, loss)
    save_args(run)
    run.store.publish([ARGS, BEST, REFERENCE_BEST])


def save_args(run: Run) -> None:
    """The resolved config beside the checkpoints (args.yaml, as the reference)."""
    path = run.store.path(ARGS)
    try:
        save_config(run.cfg, path)
    except OSError as e:
        raise CheckpointError(
            f"saving {path} failed ({e.strerror or e}); the previous {ARGS} is intact; free space in "
            f"{path.parent}, then run again with resume=auto"
        ) from e


def save_reference(run: Run, name: str, per: float, loss: float) -> None:
    layout = checkpoint.reference_layout(
        run.raw_model.state_dict(), run.optimizer.state_dict(), run.scheduler.state_dict(), per, loss
    )
    checkpoint.save(layout, run.store.path(name))
