"""GRU decoder: reference shapes, parameter count, initialisation, patching and the day layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from ml.config import TrainConfig, load_train_config
from ml.model import GRUDecoder, build_model, count_parameters, output_lengths

torch.set_num_threads(1)

REFERENCE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "rnn_args.yaml"
REFERENCE_TOTAL = 44_315_177
REFERENCE_DAY_LAYERS = 11_819_520


def small(patch_size: int = 3, patch_stride: int = 2, n_days: int = 3, **kw) -> GRUDecoder:
    torch.manual_seed(0)
    return GRUDecoder(
        neural_dim=6,
        n_units=8,
        n_days=n_days,
        n_classes=5,
        n_layers=2,
        patch_size=patch_size,
        patch_stride=patch_stride,
        **kw,
    )


@pytest.fixture(scope="module")
def reference_model() -> GRUDecoder:
    # Built on the meta device: shapes and names without allocating 177 MB or running the inits.
    cfg = load_train_config(REFERENCE_CONFIG)
    with torch.device("meta"):
        return build_model(cfg)


def test_reference_config_parameter_count(reference_model):
    assert len(reference_model.day_weights) == 45
    assert count_parameters(reference_model) == REFERENCE_TOTAL
    day = sum(p.numel() for n, p in reference_model.named_parameters() if n.startswith("day_"))
    assert day == REFERENCE_DAY_LAYERS
    assert reference_model.gru.input_size == 14 * 512
    assert (reference_model.gru.num_layers, reference_model.gru.hidden_size) == (5, 768)
    assert reference_model.gru.dropout == pytest.approx(0.4)
    assert reference_model.day_layer_dropout.p == pytest.approx(0.2)


def test_reference_parameter_names_and_shapes(reference_model):
    shapes = {n: tuple(p.shape) for n, p in reference_model.named_parameters()}
    assert shapes["day_weights.0"] == (512, 512)
    assert shapes["day_biases.44"] == (1, 512)
    assert shapes["h0"] == (1, 1, 768)
    assert shapes["gru.weight_ih_l0"] == (3 * 768, 14 * 512)
    assert shapes["gru.weight_hh_l4"] == (3 * 768, 768)
    assert shapes["out.weight"] == (41, 768)
    assert shapes["out.bias"] == (41,)


def test_initialisation():
    model = small()
    for w, b in zip(model.day_weights, model.day_biases, strict=True):
        assert torch.equal(w, torch.eye(6))
        assert torch.equal(b, torch.zeros(1, 6))
    hh = model.gru.weight_hh_l0.detach()  # (3H, H): orthogonal columns
    assert torch.allclose(hh.T @ hh, torch.eye(8), atol=1e-5)
    assert model.h0.shape == (1, 1, 8) and model.h0.abs().sum() > 0
    bound = (6 / (8 + 6 * 3)) ** 0.5  # xavier-uniform bound for weight_ih_l0 (24, 18)
    assert model.gru.weight_ih_l0.abs().max() <= bound


@pytest.mark.parametrize("steps", [3, 4, 5, 10, 11, 17])
def test_output_shape_with_patching(steps):
    model = small(patch_size=3, patch_stride=2).eval()
    logits = model(torch.randn(2, steps, 6), torch.tensor([0, 2]))
    expected = (steps - 3) // 2 + 1
    assert logits.shape == (2, expected, 5)
    assert output_lengths(torch.tensor([steps]), 3, 2).tolist() == [expected]


@pytest.mark.parametrize("steps", [1, 7])
def test_output_shape_without_patching(steps):
    model = small(patch_size=0, patch_stride=0).eval()
    assert model(torch.randn(3, steps, 6), torch.tensor([0, 1, 2])).shape == (3, steps, 5)
    assert output_lengths(torch.tensor([steps, 0]), 0, 0).tolist() == [steps, 0]


def test_batch_shorter_than_one_patch_is_refused():
    model = small(patch_size=4, patch_stride=2)
    with pytest.raises(ValueError, match="shorter than one patch"):
        model(torch.randn(1, 3, 6), torch.tensor([0]))


def test_output_lengths_reference_values_and_short_trials():
    n = torch.tensor([1025, 138, 14, 17, 18, 13, 5, 0], dtype=torch.int32)
    lengths = output_lengths(n, 14, 4)
    assert lengths.dtype == torch.int64
    # (n - 14) // 4 + 1 for whole windows; shorter than one window -> 0, never negative.
    assert lengths.tolist() == [253, 32, 1, 1, 2, 0, 0, 0]


def test_patches_are_bin_major_then_feature():
    model = small(patch_size=2, patch_stride=1)
    x = torch.arange(3 * 6, dtype=torch.float32).view(1, 3, 6)
    patched = model.patch(x)
    assert patched.shape == (1, 2, 12)
    assert torch.equal(patched[0, 0], torch.cat([x[0, 0], x[0, 1]]))
    assert torch.equal(patched[0, 1], torch.cat([x[0, 1], x[0, 2]]))


def test_day_layer_uses_each_trials_session():
    model = small()
    with torch.no_grad():
        for i, (w, b) in enumerate(zip(model.day_weights, model.day_biases, strict=True)):
            w.copy_(torch.randn(6, 6))
            b.fill_(float(i))
    x = torch.randn(4, 5, 6)
    days = torch.tensor([2, 0, 2, 1])
    got = model.day_layer(x, days)
    for k, d in enumerate(days.tolist()):
        want = x[k] @ model.day_weights[d] + model.day_biases[d]
        assert torch.allclose(got[k], want, atol=1e-5)
    got.sum().backward()
    assert all(w.grad.abs().sum() > 0 for w in model.day_weights)


def test_sessions_absent_from_the_batch_get_no_gradient():
    # As in the reference: AdamW then skips them, instead of moving them by momentum and decay.
    model = small(n_days=4)
    model(torch.randn(3, 7, 6), torch.tensor([3, 1, 3])).sum().backward()
    assert [w.grad is not None for w in model.day_weights] == [False, True, False, True]
    assert [b.grad is not None for b in model.day_biases] == [False, True, False, True]
    assert model.day_weights[3].grad.abs().sum() > 0


def test_states_and_return_state():
    model = small().eval()
    x, days = torch.randn(2, 9, 6), torch.tensor([0, 1])
    logits, hidden = model(x, days, return_state=True)
    assert hidden.shape == (2, 2, 8)
    # The default initial state is h0 for every layer and trial.
    again = model(x, days, states=model.h0.expand(2, 2, 8).contiguous())
    assert torch.allclose(logits, again)
    other = model(x, days, states=torch.zeros(2, 2, 8))
    assert not torch.allclose(logits, other)


def test_dropout_only_in_train_mode():
    model = small(rnn_dropout=0.5, input_dropout=0.5)
    x, days = torch.randn(2, 9, 6), torch.tensor([0, 1])
    model.eval()
    assert torch.equal(model(x, days), model(x, days))
    model.train()
    assert not torch.equal(model(x, days), model(x, days))


def test_build_model_from_config():
    cfg = TrainConfig()
    cfg.dataset.sessions = ["s1", "s2"]
    cfg.dataset.feature_subset = [0, 1, 2, 3]
    cfg.model.n_units, cfg.model.n_layers, cfg.model.patch_size, cfg.model.patch_stride = 8, 2, 2, 2
    cfg.model.input_network.input_trainable = False
    model = build_model(cfg)
    assert (model.neural_dim, model.n_days, model.n_classes, model.n_layers) == (4, 2, 41, 2)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("day_"))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("gru."))
    cfg.dataset.sessions = []
    with pytest.raises(ConfigError, match="dataset.sessions"):
        build_model(cfg)


def test_state_dict_keys_are_the_reference_ones():
    # The reference nejm-brain-to-text GRUDecoder's keys, so its checkpoints load unchanged.
    keys = set(small(n_days=2).state_dict())
    gru = {
        f"gru.{kind}_{part}_l{layer}"
        for kind in ("weight", "bias")
        for part in ("ih", "hh")
        for layer in (0, 1)
    }
    day = {f"day_{kind}.{i}" for kind in ("weights", "biases") for i in (0, 1)}
    assert keys == {"h0", "out.weight", "out.bias"} | gru | day


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reference_model_trains_a_step_on_cuda_under_bf16_autocast():
    cfg = load_train_config(REFERENCE_CONFIG)
    model = build_model(cfg).cuda().train()
    x = torch.randn(8, 300, 512, device="cuda")
    n = torch.full((8,), 300, device="cuda")
    days = torch.tensor([0, 5, 5, 44, 0, 1, 2, 3], device="cuda")
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        logits = model(x, days)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        targets = torch.randint(1, 41, (8, 20), device="cuda")
        loss = torch.nn.functional.ctc_loss(
            log_probs,
            targets,
            output_lengths(n, 14, 4),
            torch.full((8,), 20, device="cuda"),
            blank=0,
            reduction="none",
        ).mean()
    assert logits.shape == (8, (300 - 14) // 4 + 1, 41)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.day_weights[44].grad is not None and model.day_weights[6].grad is None


def test_the_memory_estimate_counts_the_parameters_the_model_has():
    """ml.memory counts parameters from the config alone (to refuse a model before allocating it);
    the count must be the built model's, for the reference, the demo and a patch-free subset."""
    from ml.config import load_train_config
    from ml.memory import estimate, parameter_count
    from ml.model import build_model, count_parameters

    repo = Path(__file__).resolve().parents[2]
    for path, overrides in [
        ("configs/rnn_args.yaml", []),
        ("configs/demo.yaml", []),
        ("configs/demo.yaml", ["model.patch_size=0", "dataset.feature_subset=[1, 2, 3]", "model.n_layers=2"]),
    ]:
        cfg = load_train_config(repo / path, overrides)
        assert parameter_count(cfg) == count_parameters(build_model(cfg))
    reference = load_train_config(repo / "configs/rnn_args.yaml")
    assert parameter_count(reference) == 44_315_177  # data-format.md's figure for 45 sessions
    assert 1e9 < estimate(reference).train_bytes < 8e9  # fits a 24 GB GPU, as the reference does


def test_available_ram_counts_the_page_cache_linux_can_drop(tmp_path):
    """The fit check reads MemAvailable, not MemFree: after a dataset has been read, the page cache
    holds most of the RAM, and MemFree alone would refuse a model that fits."""
    from ml.memory import _meminfo_available

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 25165824 kB\nMemFree: 524288 kB\nMemAvailable: 20971520 kB\n")
    assert _meminfo_available(str(meminfo)) == 20971520 * 1024
    assert _meminfo_available(str(tmp_path / "absent")) is None  # not Linux: the sysconf fallback
