"""One validation pass: CTC loss and greedy-decoded phoneme error rate, overall and per session.

Each rank decodes its share of the validation batches; the raw results (predictions, labels,
session of each trial, summed loss) are gathered so every rank computes the same PER (see
ml/distributed.py). The pass checks the stop flag between batches: a signal during validation
ends it early and the partial result is discarded (a best checkpoint is never chosen from part
of the data). It runs with its own RNG state (fork_rng) so validating or not at a step never
changes the training randomness, which keeps resumed runs exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ml import distributed
from ml.augment import transform_batch
from ml.config import TrainConfig
from ml.metrics import PerTracker, greedy_decode, labels_to_lists
from ml.model import output_lengths
from ml.stopping import StopFlag


@dataclass
class ValResult:
    per: float
    loss: float
    per_day: dict[str, float] = field(default_factory=dict)


def ctc_loss(logits: torch.Tensor, batch: dict, n_time_steps: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Per-trial CTC loss (blank 0, summed over each trial's phonemes), shape (B,).

    Input lengths are the patched lengths of the (possibly cut) trials.
    """
    lengths = output_lengths(n_time_steps, cfg.model.patch_size, cfg.model.patch_stride)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, C)
    return torch.nn.functional.ctc_loss(
        log_probs,
        batch["seq_class_ids"].to(logits.device),
        lengths.to(logits.device),
        batch["phone_seq_lens"].to(logits.device),
        blank=0,
        reduction="none",
        zero_infinity=False,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    fast = device.type == "cuda"
    return {k: (v.to(device, non_blocking=fast) if torch.is_tensor(v) else v) for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA when use_amp (no grad scaler needed for bf16); off on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.use_amp and device.type == "cuda")


@torch.no_grad()
def decode_batch(model: torch.nn.Module, cpu_batch: dict, cfg: TrainConfig, device: torch.device):
    """The evaluation forward pass on one batch: (batch on the device, logits, patched-input
    lengths, greedy CTC predictions). Validation and `python -m ml.evaluate` share it, so their
    PER cannot drift apart: smoothing only (no augmentation), the run's bf16 rule, best path."""
    batch = to_device(cpu_batch, device)
    x, n = transform_batch(
        batch["input_features"], batch["n_time_steps"], cfg.dataset.data_transforms, train=False
    )
    with autocast(cfg, device):
        logits = model(x, batch["day_indices"])
    out_lens = output_lengths(n, cfg.model.patch_size, cfg.model.patch_stride)
    return batch, logits, n, greedy_decode(logits, out_lens)


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader,
    cfg: TrainConfig,
    device: torch.device,
    stop: StopFlag,
    d: distributed.Dist,
) -> ValResult | None:
    """The model's validation PER and mean per-trial loss; None when a stop signal cut it short."""
    was_training = model.training
    model.eval()
    preds: list[list[int]] = []
    labels: list[list[int]] = []
    days: list[int] = []
    loss_sum, n_trials, interrupted = 0.0, 0, False
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        for cpu_batch in loader:
            if stop.requested:
                interrupted = True
                break
            batch, logits, n, batch_preds = decode_batch(model, cpu_batch, cfg, device)
            loss = ctc_loss(logits, batch, n, cfg)
            loss_sum += float(loss.sum())
            n_trials += int(loss.numel())
            preds += batch_preds
            labels += labels_to_lists(batch["seq_class_ids"], batch["phone_seq_lens"])
            days += [int(v) for v in batch["day_indices"].cpu().tolist()]
    model.train(was_training)

    parts = distributed.gather((preds, labels, days, loss_sum, n_trials, interrupted or stop.requested), d)
    if any(p[5] for p in parts):
        return None
    tracker = PerTracker()
    total_loss, total_trials = 0.0, 0
    for p_preds, p_labels, p_days, p_loss, p_n, _ in parts:
        tracker.add(p_preds, p_labels, p_days)
        total_loss += p_loss
        total_trials += p_n
    sessions = cfg.dataset.sessions
    per_day = {sessions[day] if day < len(sessions) else str(day): r for day, r in tracker.per_day().items()}
    return ValResult(tracker.overall(), total_loss / max(1, total_trials), per_day)
