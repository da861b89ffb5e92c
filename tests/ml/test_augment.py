"""Augmentations: the reference smoothing kernel, order-independent facts of each noise, RNG use."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.errors import ConfigError
from ml.augment import gaussian_kernel, smooth, transform_batch
from ml.config import TransformsConfig

torch.set_num_threads(1)

# data-format.md, "Augmentation": std 2 sampled on 100 points.
REFERENCE_TAPS = [0.02763, 0.06628, 0.12383, 0.18017, 0.20416, 0.18017, 0.12383, 0.06628, 0.02763]

OFF = TransformsConfig(
    white_noise_std=0.0,
    constant_offset_std=0.0,
    random_walk_std=0.0,
    static_gain_std=0.0,
    random_cut=0,
    smooth_data=False,
)


def only(**kw) -> TransformsConfig:
    return dataclasses.replace(OFF, **kw)


def batch(b: int = 3, t: int = 40, c: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, t, c, generator=g), torch.tensor([t, t - 5, t - 20][:b])


def test_kernel_is_the_reference_nine_taps():
    kernel = gaussian_kernel(2.0, 100)
    assert kernel.dtype == torch.float32
    assert kernel.tolist() == pytest.approx(REFERENCE_TAPS, abs=1e-4)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_smoothing_is_a_same_length_per_channel_convolution():
    x = torch.zeros(1, 21, 2)
    x[0, 10, 0] = 1.0  # an impulse in channel 0 only
    y = smooth(x, gaussian_kernel())
    assert y.shape == x.shape
    assert y[0, 6:15, 0].tolist() == pytest.approx(REFERENCE_TAPS, abs=1e-4)
    assert y[0, :6, 0].abs().sum() == 0 and y[0, 15:, 0].abs().sum() == 0
    assert y[0, :, 1].abs().sum() == 0


def test_validation_is_deterministic_smoothing_only():
    x, n = batch()
    before = x.clone()
    cfg = TransformsConfig()  # reference values: every train augmentation on
    y1, n1 = transform_batch(x, n, cfg, train=False)
    y2, n2 = transform_batch(x, n, cfg, train=False)
    assert torch.equal(y1, y2) and torch.equal(n1, n)
    assert torch.allclose(y1, smooth(x, gaussian_kernel()))
    assert torch.equal(x, before)  # the input batch is left alone
    unsmoothed, _ = transform_batch(x, n, dataclasses.replace(cfg, smooth_data=False), train=False)
    assert torch.equal(unsmoothed, x)


def test_train_changes_data_and_is_reproducible_under_a_seed():
    x, n = batch()
    cfg = TransformsConfig()
    torch.manual_seed(123)
    y1, n1 = transform_batch(x, n, cfg, train=True)
    torch.manual_seed(123)
    y2, n2 = transform_batch(x, n, cfg, train=True)
    assert torch.equal(y1, y2) and torch.equal(n1, n2)
    y3, _ = transform_batch(x, n, cfg, train=True)  # the generator moved on
    assert not torch.equal(y1[:, : y3.shape[1]], y3[:, : y1.shape[1]])
    assert not torch.allclose(y1, smooth(x[:, x.shape[1] - y1.shape[1] :], gaussian_kernel()))


def test_white_noise_per_element_with_the_configured_std():
    x = torch.zeros(4, 200, 64)
    torch.manual_seed(0)
    y, _ = transform_batch(x, torch.full((4,), 200), only(white_noise_std=1.0), train=True)
    assert y.std().item() == pytest.approx(1.0, rel=0.02)
    assert abs(y.mean().item()) < 0.02


def test_constant_offset_is_one_value_per_trial_and_channel():
    x = torch.zeros(5, 30, 16)
    torch.manual_seed(0)
    y, _ = transform_batch(x, torch.full((5,), 30), only(constant_offset_std=0.2), train=True)
    assert torch.equal(y, y[:, :1, :].expand_as(y))  # constant along time
    offsets = y[:, 0, :]
    assert not torch.equal(offsets[0], offsets[1])  # differs between trials
    assert not torch.equal(offsets[:, 0], offsets[:, 1])  # and between channels
    assert offsets.std().item() == pytest.approx(0.2, rel=0.3)


def test_random_walk_accumulates_along_time():
    x = torch.zeros(2, 400, 32)
    torch.manual_seed(0)
    y, _ = transform_batch(
        x, torch.full((2,), 400), only(random_walk_std=0.1, random_walk_axis=1), train=True
    )
    steps = y.diff(dim=1)
    assert steps.std().item() == pytest.approx(0.1, rel=0.05)
    assert y[:, -50:].std() > 3 * y[:, :50].std()  # variance grows along the walk


def test_static_gain_mixes_channels_per_trial():
    x = torch.eye(4).expand(2, 4, 4).contiguous()  # trial rows are unit vectors: y = warp
    torch.manual_seed(0)
    y, _ = transform_batch(x, torch.full((2,), 4), only(static_gain_std=0.1), train=True)
    assert not torch.equal(y[0], y[1])
    assert (y - x).abs().max() > 0 and (y.diagonal(dim1=1, dim2=2) - 1).abs().max() < 0.5


def test_random_cut_drops_leading_bins_and_lengths_alike():
    t = 30
    x = torch.arange(t, dtype=torch.float32).view(1, t, 1).expand(3, t, 2).contiguous()
    n = torch.tensor([30, 25, 2])
    seen = set()
    torch.manual_seed(0)
    for _ in range(60):
        y, m = transform_batch(x, n, only(random_cut=5), train=True)
        cut = t - y.shape[1]
        seen.add(cut)
        assert torch.equal(y[:, 0, 0], torch.full((3,), float(cut)))  # the leading bins are gone
        assert m.tolist() == [30 - cut, 25 - cut, max(0, 2 - cut)]
    assert seen == {0, 1, 2, 3, 4}  # one value in [0, random_cut) per batch


def test_disabled_steps_draw_no_random_numbers():
    x, n = batch()
    torch.manual_seed(7)
    transform_batch(x, n, OFF, train=True)
    after = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_transforms_run_on_the_gpu_with_its_generator():
    x = torch.randn(4, 100, 16, device="cuda")
    n = torch.full((4,), 100, device="cuda")
    cfg = TransformsConfig(static_gain_std=0.05, random_walk_std=0.01)
    torch.manual_seed(5)  # seeds the CPU and every CUDA generator
    y1, n1 = transform_batch(x, n, cfg, train=True)
    torch.manual_seed(5)
    y2, n2 = transform_batch(x, n, cfg, train=True)
    assert y1.device.type == n1.device.type == "cuda"
    assert torch.equal(y1, y2) and torch.equal(n1, n2)
    val, _ = transform_batch(x, n, cfg, train=False)
    assert torch.allclose(val.cpu(), smooth(x.cpu(), gaussian_kernel()), atol=1e-5)


def test_unusable_smoothing_config_names_the_key():
    x, n = batch()
    with pytest.raises(ConfigError, match="smooth_kernel_std"):
        transform_batch(x, n, dataclasses.replace(TransformsConfig(), smooth_kernel_std=0.0), train=False)
