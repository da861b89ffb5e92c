"""Decoding a split with a checkpoint's weights: the torch half of ``python -m ml.evaluate``.

ml/evaluate.py checks its inputs and outputs first, then imports this (and torch with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ml import checkpoint, distributed
from ml.config import TrainConfig
from ml.data import build_eval_loader
from ml.metrics import PerTracker, edit_distance, labels_to_lists
from ml.model import build_model
from ml.validation import ctc_loss, decode_batch


@dataclass
class TrialRow:
    session: str
    block: int
    trial: int
    predicted: list[int]
    label: list[int] | None  # None: the split carries no labels (test)

    @property
    def edits(self) -> int | None:
        return None if self.label is None else edit_distance(self.predicted, self.label)


@dataclass
class Evaluation:
    split: str
    rows: list[TrialRow]
    per: float | None  # None without labels
    per_session: dict[str, float] = field(default_factory=dict)
    loss: float | None = None


def load_model(cfg: TrainConfig, local: Path, source: str) -> tuple[torch.nn.Module, torch.device, dict]:
    """The model of ``cfg`` with the checkpoint's weights, on the trainer's device. Returns (model,
    device, what the checkpoint recorded: its step and val PER, either possibly None)."""
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = distributed.pick_device(cfg.device, cfg.gpu_number, distributed.Dist())
    ckpt = checkpoint.load(local)
    model = build_model(cfg).to(device)
    checkpoint.load_model_state(model, ckpt["model_state_dict"], source)
    return model, device, {"step": ckpt.get("step"), "val_PER": ckpt.get("val_PER")}


@torch.no_grad()
def evaluate(cfg: TrainConfig, model: torch.nn.Module, split: str, device: torch.device) -> Evaluation:
    """Decode every trial of the split; PER (and CTC loss) over the labelled ones."""
    loader = build_eval_loader(cfg, split)
    model.eval()
    sessions = cfg.dataset.sessions
    rows: list[TrialRow] = []
    tracker = PerTracker()
    loss_sum, loss_trials = 0.0, 0
    for cpu_batch in loader:
        batch, logits, n, preds = decode_batch(model, cpu_batch, cfg, device)
        labelled = bool((batch["phone_seq_lens"] > 0).all())
        labels = labels_to_lists(batch["seq_class_ids"], batch["phone_seq_lens"]) if labelled else None
        days = [int(v) for v in batch["day_indices"].cpu().tolist()]
        if labels is not None:
            tracker.add(preds, labels, days)
            loss = ctc_loss(logits, batch, n, cfg)
            loss_sum += float(loss.sum())
            loss_trials += int(loss.numel())
        blocks, trials = batch["block_nums"].cpu().tolist(), batch["trial_nums"].cpu().tolist()
        for i, pred in enumerate(preds):
            rows.append(
                TrialRow(
                    sessions[days[i]], int(blocks[i]), int(trials[i]), pred, labels[i] if labels else None
                )
            )
    if not tracker.length:
        return Evaluation(split, rows, None)
    per_session = {sessions[day]: per for day, per in tracker.per_day().items()}
    return Evaluation(split, rows, tracker.overall(), per_session, loss_sum / max(1, loss_trials))
