"""Checkpoint files: what they hold, how they are written (atomically) and read back.

Three files live in checkpoint_dir, with the resolved config as args.yaml beside them:

- ``last.pt``: everything to resume *exactly*: model, optimizer, scheduler, the step (batches
  done, so the next batch to train), every rank's torch/numpy/python (and CUDA) RNG states, best
  metrics, the early-stopping counter and the config. Written every ``batches_per_save`` batches
  (0: at each validation step) and on exit.
- ``best.pt``: the weights at the lowest validation PER (ties: lower loss), with its metrics.
- ``best_checkpoint``: the reference baseline's layout (model/optimizer/scheduler state dicts,
  val_PER, val_loss), so the reference's own evaluation scripts can read our runs.

A write goes to a temporary file in the same folder, is fsynced, then renamed over the old one:
a crash or kill -9 at any moment leaves the previous checkpoint whole. State dicts are saved
without the ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes; on load both are
stripped, so reference checkpoints load too.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic import atomic_path
from ml.errors import CheckpointError

FORMAT = "spotrun-checkpoint-1"
_PREFIXES = ("_orig_mod.", "module.")


def save(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` atomically (temp file, fsync, rename).

    A failed write (disk full, quota, read-only) leaves the previous file whole and is a
    CheckpointError saying so. torch.save gets an open file, not a path: writing to a path, torch
    reports a full disk as "enforce fail ... unexpected pos", while through a Python file the
    OSError (ENOSPC, EFBIG ...) stays attached as the error's context.
    """
    p = Path(path)
    try:
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError):
            raise
        kept = f"the previous {p.name} is intact" if p.is_file() else f"no {p.name} was written"
        raise CheckpointError(
            f"saving {p} failed ({cause.strerror or cause}); {kept}; free space in {p.parent} (or "
            "choose another checkpoint_dir/output_dir), then run again with resume=auto"
        ) from e


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dict; a missing, truncated or foreign file is a one-line CheckpointError.

    weights_only=True: a checkpoint may come from S3 or another machine, and unpickling arbitrary
    objects would run their code. RNG states are stored as tensors and plain tuples for this reason.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found; check the path (resume= / init_checkpoint_path=)")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({first[:160]}); it is truncated or not a torch "
            "checkpoint: delete it or point resume= at another file"
        ) from None
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
        raise CheckpointError(f"checkpoint {p} holds no model_state_dict; it is not a trainer checkpoint")
    return obj


# The reference trainer may store val_PER/val_loss as numpy scalars; allow exactly those.
_NUMPY_SCALARS = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
try:  # numpy 2 keeps the scalar reconstructor here
    from numpy._core.multiarray import scalar as _np_scalar

    _NUMPY_SCALARS.append(_np_scalar)
except ImportError:  # pragma: no cover
    pass


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the wrappers' key prefixes (``_orig_mod.`` from torch.compile, ``module.`` from DDP)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def shape_mismatch(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """The first difference between the model and a (prefix-stripped) state dict, in words that
    name both shapes; None when every key and shape agrees."""
    mine = model.state_dict()

    def shape(t) -> str:
        return "(" + ", ".join(str(d) for d in t.shape) + ")"

    for key, value in state_dict.items():
        if key in mine and tuple(mine[key].shape) != tuple(value.shape):
            return f"{key} is {shape(value)} in the checkpoint but {shape(mine[key])} in the model"
    extra = [k for k in state_dict if k not in mine]
    missing = [k for k in mine if k not in state_dict]
    if extra or missing:
        return (
            f"the checkpoint has {len(state_dict)} tensors ({len(extra)} unknown to the model, e.g. "
            f"{(extra or ['-'])[0]}), the model {len(mine)} ({len(missing)} not in the checkpoint, e.g. "
            f"{(missing or ['-'])[0]})"
        )
    return None


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights (prefixes stripped); a shape or key mismatch is a one-line CheckpointError."""
    state_dict = strip_prefixes(state_dict)
    differs = shape_mismatch(model, state_dict)
    if differs:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: {differs}; check that model.* and "
            "dataset.sessions match the run that wrote it (its args.yaml)"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:240]
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({detail}); check model.* and "
            "dataset.sessions match the run that wrote it"
        ) from None


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Weights only (init_from_checkpoint): a spotrun or reference checkpoint."""
    ckpt = load(path)
    load_model_state(model, ckpt["model_state_dict"], str(path))
    return ckpt


# ---- RNG states: everything that makes step N+1 the same after a resume ----


def rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_cached),
        ),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def reference_layout(model_state, optimizer_state, scheduler_state, val_per, val_loss) -> dict[str, Any]:
    """The reference's best_checkpoint dict, key for key."""
    return {
        "model_state_dict": model_state,
        "optimizer_state_dict": optimizer_state,
        "scheduler_state_dict": scheduler_state,
        "val_PER": float(val_per),
        "val_loss": float(val_loss),
    }


@dataclass
class ResumePoint:
    step: int  # batches done: the next batch to train
    best_per: float | None
    best_loss: float | None
    bad_val_steps: int
    exact: bool  # our last.pt (every RNG stream restored) vs a reference file (fresh noise streams)
    nonfinite_batches: int = 0  # batches skipped so far for a non-finite loss (max_nonfinite_batches)


def restore(
    ckpt: dict[str, Any], source: str, model, optimizer, scheduler, rank: int, seed: int
) -> ResumePoint:
    """Load a checkpoint into the model, optimizer and scheduler and set this rank's RNG streams.

    Our ``last.pt`` resumes exactly. A reference ``best_checkpoint`` (or any file with optimizer and
    scheduler state) resumes at its scheduler's step with its val PER/loss as the best so far: the
    batch sequence is a function of (seed, step, rank), so it continues as ours would, but the
    reference saved no RNG states, so augmentation noise restarts from ``seed + rank + step``.
    """
    exact = ckpt.get("format") == FORMAT
    sched = ckpt.get("scheduler_state_dict")
    if exact:
        wanted = ("step", "optimizer_state_dict", "scheduler_state_dict", "rng")
        missing = [k for k in wanted if k not in ckpt]
    else:
        has_step = isinstance(sched, dict) and "last_epoch" in sched
        missing = [] if has_step and ckpt.get("optimizer_state_dict") else ["optimizer or scheduler state"]
    if missing:
        raise CheckpointError(
            f"checkpoint {source} cannot be resumed from (no {', '.join(missing)}); "
            "to start from its weights set init_from_checkpoint=true init_checkpoint_path=" + source
        )
    load_model_state(model, ckpt["model_state_dict"], source)
    names = [group.get("name") for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        scheduler.load_state_dict(sched)
    except (ValueError, KeyError, TypeError) as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"checkpoint {source}: its optimizer state does not fit this model's parameter groups "
            f"({detail}); to start from its weights set init_from_checkpoint=true "
            f"init_checkpoint_path={source}"
        ) from None
    for group, name in zip(optimizer.param_groups, names, strict=True):
        group["name"] = name  # load_state_dict takes the file's group keys; a reference file has no names
    if exact:
        rngs = ckpt["rng"]
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        else:  # more ranks than the run that saved it: a fresh but reproducible stream
            torch.manual_seed(seed + rank + int(ckpt["step"]))
        return ResumePoint(
            int(ckpt["step"]),
            ckpt.get("best_per"),
            ckpt.get("best_loss"),
            int(ckpt.get("bad_val_steps", 0)),
            True,
            int(ckpt.get("nonfinite_batches", 0)),
        )
    step = int(sched["last_epoch"])
    torch.manual_seed(seed + rank + step)
    per, loss = (None if ckpt.get(k) is None else float(ckpt[k]) for k in ("val_PER", "val_loss"))
    return ResumePoint(step, per, loss, 0, False)
