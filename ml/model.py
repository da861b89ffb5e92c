"""The Brain-to-Text GRU decoder: per-session input layers, time patching, a GRU, a linear head.

Parameter names and shapes match the reference ``GRUDecoder`` of nejm-brain-to-text
(``model_training/rnn_model.py``), so a reference ``best_checkpoint``'s ``model_state_dict`` loads
with ``load_state_dict`` once any ``_orig_mod.`` / ``module.`` prefix is stripped:

    day_weights.{i}   (F, F)        per-session weight, identity at init
    day_biases.{i}    (1, F)        per-session bias, zero at init
    gru.*                           nn.GRU(patch_size * F, n_units, n_layers, batch_first)
    out.weight/bias   (C, n_units)  output head
    h0                (1, 1, n_units) learned initial state shared by all layers and trials

Loss, for the training loop: CTC on ``logits.log_softmax(-1)`` transposed to (T', B, C), blank 0,
``reduction="none"`` then the mean over the batch; input lengths are
``output_lengths(n_time_steps, patch_size, patch_stride)`` of the (augmented) n_time_steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.errors import ConfigError
from ml.config import TrainConfig


class GRUDecoder(nn.Module):
    """(B, T, F) neural features + (B,) session indices -> (B, T', n_classes) logits.

    ``patch_size`` 0 turns patching off (T' = T). With patching, windows of ``patch_size`` bins
    taken every ``patch_stride`` bins are flattened as (bin-in-window, feature), so T' =
    (T - patch_size) // patch_stride + 1; a batch shorter than one window is refused.
    """

    def __init__(
        self,
        neural_dim: int,
        n_units: int,
        n_days: int,
        n_classes: int,
        rnn_dropout: float = 0.0,
        input_dropout: float = 0.0,
        n_layers: int = 5,
        patch_size: int = 0,
        patch_stride: int = 0,
    ) -> None:
        super().__init__()
        if n_days < 1:
            raise ValueError("GRUDecoder needs at least one session (n_days >= 1)")
        if patch_size > 0 and patch_stride < 1:
            raise ValueError(f"patch_stride must be at least 1 when patch_size is {patch_size}")
        self.neural_dim = neural_dim
        self.n_units = n_units
        self.n_days = n_days
        self.n_classes = n_classes
        self.n_layers = n_layers
        self.rnn_dropout = rnn_dropout
        self.input_dropout = input_dropout
        self.patch_size = patch_size
        self.patch_stride = patch_stride

        # Identity start: each session's layer begins as a pass-through and learns that day's drift.
        self.day_weights = nn.ParameterList([nn.Parameter(torch.eye(neural_dim)) for _ in range(n_days)])
        self.day_biases = nn.ParameterList([nn.Parameter(torch.zeros(1, neural_dim)) for _ in range(n_days)])
        self.day_layer_activation = nn.Softsign()
        self.day_layer_dropout = nn.Dropout(input_dropout)

        self.input_size = neural_dim * patch_size if patch_size > 0 else neural_dim
        self.gru = nn.GRU(
            input_size=self.input_size,
            hidden_size=n_units,
            num_layers=n_layers,
            dropout=rnn_dropout,
            batch_first=True,
            bidirectional=False,
        )
        for name, param in self.gru.named_parameters():
            if "weight_hh" in name:
                nn.init.orthogonal_(param)
            elif "weight_ih" in name:
                nn.init.xavier_uniform_(param)

        self.out = nn.Linear(n_units, n_classes)
        nn.init.xavier_uniform_(self.out.weight)

        self.h0 = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(1, 1, n_units)))

    def day_layer(self, x: Tensor, day_idx: Tensor) -> Tensor:
        """Each trial through its own session's Linear(F, F), without a Python loop over the batch.

        Only the sessions present in the batch are stacked, then gathered per trial: one batched
        matmul for the whole batch. Sessions not in the batch get no gradient (``grad`` stays
        None), so AdamW leaves them untouched, as in the reference; stacking all sessions would
        hand them zero gradients and let momentum and weight decay move them every step.
        (Under DistributedDataParallel that means ``find_unused_parameters=True``.)
        """
        day_idx = day_idx.to(device=x.device, dtype=torch.long)
        # One host sync to learn which sessions are present (the reference syncs once per trial).
        present, local = torch.unique(day_idx, return_inverse=True)
        days = present.tolist()
        weights = torch.stack([self.day_weights[d] for d in days]).index_select(0, local)  # (B, F, F)
        biases = torch.cat([self.day_biases[d] for d in days]).index_select(0, local)  # (B, F)
        return torch.baddbmm(biases.unsqueeze(1), x, weights)

    def patch(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T', patch_size * F), each row ordered (bin-in-window, feature)."""
        if self.patch_size <= 0:
            return x
        if x.shape[1] < self.patch_size:
            raise ValueError(
                f"a batch of {x.shape[1]} time bins is shorter than one patch ({self.patch_size} bins)"
            )
        windows = x.unfold(1, self.patch_size, self.patch_stride)  # (B, T', F, patch)
        return windows.transpose(2, 3).reshape(x.shape[0], windows.shape[1], -1)

    def forward(
        self, x: Tensor, day_idx: Tensor, states: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        x = self.day_layer_activation(self.day_layer(x, day_idx))
        x = self.day_layer_dropout(x)
        x = self.patch(x)
        if states is None:
            states = self.h0.expand(self.n_layers, x.shape[0], self.n_units).contiguous()
        output, hidden = self.gru(x, states)
        logits = self.out(output)
        if return_state:
            return logits, hidden
        return logits


def build_model(cfg: TrainConfig) -> GRUDecoder:
    """The decoder for ``cfg``: one input layer per ``dataset.sessions`` entry, features from
    ``cfg.n_features`` (the feature subset's size when set). ``model.rnn_trainable`` /
    ``input_network.input_trainable`` false freeze the GRU / the session layers, as the reference.
    """
    n_days = len(cfg.dataset.sessions)
    if n_days == 0:
        raise ConfigError("dataset.sessions is empty; list the session folders to train on")
    m = cfg.model
    model = GRUDecoder(
        neural_dim=cfg.n_features,
        n_units=m.n_units,
        n_days=n_days,
        n_classes=cfg.dataset.n_classes,
        rnn_dropout=m.rnn_dropout,
        input_dropout=m.input_network.input_layer_dropout,
        n_layers=m.n_layers,
        patch_size=m.patch_size,
        patch_stride=m.patch_stride,
    )
    if not m.rnn_trainable:
        model.gru.requires_grad_(False)
    if not m.input_network.input_trainable:
        model.day_weights.requires_grad_(False)
        model.day_biases.requires_grad_(False)
    return model


def output_lengths(n_time_steps: Tensor, patch_size: int, patch_stride: int) -> Tensor:
    """Valid output steps per trial (int64): the CTC input lengths.

    With patching, ``(n - patch_size) // patch_stride + 1``: the windows that lie wholly inside the
    trial. A trial shorter than one window has none, so the result is clamped at 0 (the reference's
    float formula gives negative numbers there). Without patching (``patch_size`` 0), ``n``.
    """
    n = torch.as_tensor(n_time_steps).to(torch.int64)
    if patch_size <= 0:
        return n.clamp(min=0)
    return (torch.div(n - patch_size, patch_stride, rounding_mode="floor") + 1).clamp(min=0)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (44,315,177 for the 45-session reference config)."""
    return sum(p.numel() for p in model.parameters())
