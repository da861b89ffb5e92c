"""Batch augmentations and smoothing, run on the batch's device after it arrives.

Order and distributions follow the reference trainer (nejm-brain-to-text ``transform_data``):
static gain, white noise, constant offset, random walk, random cut, then Gaussian smoothing (the
only step that also runs in validation). All randomness comes from torch's global generators: the
CUDA generator for noise on a GPU batch, the CPU generator for noise on a CPU batch and for the cut
length. The training loop saves and restores both, so a resumed run draws the same noise.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ConfigError
from ml.config import TransformsConfig

# scipy.ndimage.gaussian_filter1d (the reference's kernel source) truncates at 4 std.
_TRUNCATE = 4.0
# Taps at or below this (after the first normalisation) are dropped, as the reference does.
_MIN_TAP = 0.01


def gaussian_kernel(std: float = 2.0, size: int = 100) -> Tensor:
    """The reference smoothing kernel: a unit impulse at ``size // 2`` of a ``size``-point signal,
    filtered by a Gaussian of ``std`` truncated at 4 std, taps <= 0.01 dropped, renormalised.

    For (2, 100) that is 9 taps, [0.02763, 0.06628, 0.12383, 0.18017, 0.20416, ...] (float32).
    """
    if std <= 0 or size < 1:
        raise ValueError(f"smoothing needs std > 0 and size >= 1, got std={std}, size={size}")
    radius = int(_TRUNCATE * std + 0.5)
    centre = size // 2
    # The impulse response, clipped to the signal: offsets from the centre that fall inside it.
    lo, hi = max(-radius, -centre), min(radius, size - 1 - centre)
    offsets = torch.arange(lo, hi + 1, dtype=torch.float64)
    full = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / std) ** 2) / torch.exp(-0.5 * (full / std) ** 2).sum()
    taps = taps[taps > _MIN_TAP]
    return (taps / taps.sum()).to(torch.float32)


def smooth(features: Tensor, kernel: Tensor) -> Tensor:
    """Convolve each channel of (B, T, C) along time with ``kernel``, 'same' length (zero padded)."""
    channels = features.shape[-1]
    weight = kernel.to(device=features.device, dtype=features.dtype).view(1, 1, -1)
    weight = weight.expand(channels, 1, -1)
    smoothed = F.conv1d(features.transpose(1, 2), weight, padding="same", groups=channels)
    return smoothed.transpose(1, 2)


@lru_cache(maxsize=8)
def _kernel_on(std: float, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Built once per device: no host work or host-to-device copy per batch. Only read, never written.
    return gaussian_kernel(std, size).to(device=device, dtype=dtype)


def transform_batch(
    features: Tensor, n_time_steps: Tensor, tcfg: TransformsConfig, train: bool
) -> tuple[Tensor, Tensor]:
    """Augment (train) and smooth a padded batch. Returns new (features, n_time_steps); the inputs
    are not modified.

    features (B, T, C) float on any device; n_time_steps (B,) int. Train, in order: static gain
    (x @ (I + N(0, s)) per trial), white noise N(0, s) per element, constant offset N(0, s) per
    (trial, channel), random walk (cumulative sum of N(0, s) along ``random_walk_axis``), random
    cut of ``c`` leading bins with c uniform in [0, random_cut) and one value per batch (every
    n_time_steps reduced by c, floored at 0). Then, when ``smooth_data``, Gaussian smoothing.
    A std of 0 (or ``random_cut`` <= 1) turns that step off and draws nothing.
    """
    x = features
    lengths = n_time_steps
    if train:
        batch, _, channels = x.shape
        if tcfg.static_gain_std > 0:
            warp = torch.eye(channels, device=x.device, dtype=x.dtype).expand(batch, channels, channels)
            warp = warp + torch.randn(batch, channels, channels, device=x.device, dtype=x.dtype) * (
                tcfg.static_gain_std
            )
            x = torch.bmm(x, warp)
        if tcfg.white_noise_std > 0:
            x = x + torch.randn(x.shape, device=x.device, dtype=x.dtype) * tcfg.white_noise_std
        if tcfg.constant_offset_std > 0:
            offset = torch.randn(batch, 1, channels, device=x.device, dtype=x.dtype)
            x = x + offset * tcfg.constant_offset_std
        if tcfg.random_walk_std > 0:
            steps = torch.randn(x.shape, device=x.device, dtype=x.dtype) * tcfg.random_walk_std
            x = x + torch.cumsum(steps, dim=tcfg.random_walk_axis)
        if tcfg.random_cut > 1:
            # Drawn on the CPU generator: a plain int, no device sync to learn the slice length.
            cut = int(torch.randint(0, tcfg.random_cut, (1,)).item())
            if cut:
                x = x[:, cut:, :]
                lengths = (lengths - cut).clamp(min=0)
    if tcfg.smooth_data:
        if tcfg.smooth_kernel_std <= 0 or tcfg.smooth_kernel_size < 1:
            raise ConfigError(
                "dataset.data_transforms.smooth_kernel_std must be > 0 and smooth_kernel_size >= 1 "
                f"(got {tcfg.smooth_kernel_std}, {tcfg.smooth_kernel_size}); or set smooth_data: false"
            )
        kernel = _kernel_on(float(tcfg.smooth_kernel_std), int(tcfg.smooth_kernel_size), x.device, x.dtype)
        x = smooth(x, kernel)
    return x, lengths
