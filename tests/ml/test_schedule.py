"""AdamW parameter groups and the per-group warm-up + decay schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ml.config import TrainConfig
from ml.model import GRUDecoder
from ml.schedule import build_optimizer, build_scheduler, group_of, lr_factor

torch.set_num_threads(1)


def config(**kw) -> TrainConfig:
    cfg = TrainConfig(
        lr_max=0.005,
        lr_min=0.0001,
        lr_warmup_steps=100,
        lr_decay_steps=1100,
        lr_max_day=0.01,
        lr_min_day=0.001,
        lr_warmup_steps_day=50,
        lr_decay_steps_day=550,
        weight_decay=0.001,
        weight_decay_day=0.002,
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def model() -> GRUDecoder:
    torch.manual_seed(0)
    return GRUDecoder(
        neural_dim=4, n_units=6, n_days=3, n_classes=5, n_layers=2, patch_size=2, patch_stride=1
    )


def test_lr_factor_cosine_milestones():
    f = lambda step: lr_factor(step, warmup=100, decay_steps=1100, min_ratio=0.02)  # noqa: E731
    assert f(0) == 0.0
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(1.0)  # end of warm-up: the peak
    assert f(600) == pytest.approx(0.02 + 0.98 * 0.5)  # halfway through the cosine
    assert f(350) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(1100) == pytest.approx(0.02)  # decay end: lr_min
    assert f(5000) == pytest.approx(0.02)  # flat after
    assert all(f(s) >= f(s + 1) for s in range(100, 1200))


def test_lr_factor_linear_and_no_warmup():
    f = lambda step: lr_factor(step, warmup=100, decay_steps=1100, min_ratio=0.02, kind="linear")  # noqa: E731
    assert (f(0), f(100), f(1100), f(2000)) == (0.0, 1.0, pytest.approx(0.02), pytest.approx(0.02))
    assert f(600) == pytest.approx(0.51)
    assert lr_factor(0, warmup=0, decay_steps=10, min_ratio=0.1) == 1.0
    with pytest.raises(ValueError, match="cosine or linear"):
        lr_factor(0, 1, 2, 0.1, kind="step")


def test_groups_hold_every_parameter_once_with_their_lr_and_decay():
    m = model()
    optimizer = build_optimizer(m, config())
    groups = optimizer.param_groups
    assert [g["name"] for g in groups] == ["bias", "day", "other"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    names = dict(m.named_parameters())
    assert by_name["day"] == {id(p) for n, p in names.items() if n.startswith("day_")}
    assert by_name["bias"] == {
        id(names[n])
        for n in ("out.bias", "gru.bias_ih_l0", "gru.bias_hh_l0", "gru.bias_ih_l1", "gru.bias_hh_l1")
    }
    assert id(names["h0"]) in by_name["other"] and id(names["out.weight"]) in by_name["other"]
    # Peak lr and decay per group (the scheduler has not scaled anything yet).
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.005, 0.0), (0.01, 0.002), (0.005, 0.001)]
    assert groups[2]["betas"] == (0.9, 0.999) and groups[2]["eps"] == 0.1


def test_group_names_survive_wrapper_prefixes():
    assert group_of("_orig_mod.day_weights.3") == "day"
    assert group_of("module.day_biases.0") == "day"
    assert group_of("module.gru.bias_hh_l4") == "bias"
    assert group_of("_orig_mod.out.bias") == "bias"
    assert group_of("module.h0") == "other"


def lrs_at(scheduler, optimizer, step: int) -> dict[str, float]:
    while scheduler.last_epoch < step:
        optimizer.step()
        scheduler.step()
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def test_scheduler_per_group_milestones():
    cfg = config()
    optimizer = build_optimizer(model(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    expect = {
        0: {"day": 0.0, "other": 0.0},
        25: {"day": 0.005, "other": 0.00125},  # mid warm-up of day (50) and of the rest (100)
        50: {"day": 0.01, "other": 0.0025},  # end of the day warm-up
        100: {"day": 0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 50 / 500)), "other": 0.005},
        300: {"day": 0.001 + 0.009 * 0.5, "other": 0.0001 + 0.0049 * 0.5 * (1 + math.cos(math.pi * 0.2))},
        550: {"day": 0.001, "other": 0.0001 + 0.0049 * 0.5 * (1 + math.cos(math.pi * 0.45))},
        600: {"day": 0.001, "other": 0.0001 + 0.0049 * 0.5},  # mid decay of the rest
        1100: {"day": 0.001, "other": 0.0001},  # decay end: lr_min
        1300: {"day": 0.001, "other": 0.0001},  # flat after
    }
    for step, want in expect.items():
        got = lrs_at(scheduler, optimizer, step)
        assert got["day"] == pytest.approx(want["day"]), step
        assert got["other"] == pytest.approx(want["other"]), step
        assert got["bias"] == got["other"], step


def test_scheduler_state_round_trips(tmp_path):
    cfg = config()
    optimizer = build_optimizer(model(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    lrs_at(scheduler, optimizer, 70)
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    optimizer2 = build_optimizer(model(), cfg)
    scheduler2 = build_scheduler(optimizer2, cfg)
    scheduler2.load_state_dict(torch.load(tmp_path / "s.pt"))
    optimizer2.step()
    scheduler2.step()
    expected = list(lrs_at(scheduler, optimizer, 71).values())
    assert [g["lr"] for g in optimizer2.param_groups] == pytest.approx(expected)
    assert scheduler2.last_epoch == 71


def test_linear_schedule_from_config():
    cfg = config(lr_scheduler_type="linear")
    optimizer = build_optimizer(model(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    assert lrs_at(scheduler, optimizer, 600)["other"] == pytest.approx(0.0001 + 0.0049 * 0.5)


def test_sessions_absent_from_a_batch_are_not_moved_by_adamw():
    cfg = config(lr_warmup_steps=0, lr_warmup_steps_day=0, weight_decay_day=0.1)
    m = model()
    optimizer = build_optimizer(m, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    for days in ([0, 1], [1, 1]):  # session 0 gets momentum in step 1, is absent in step 2
        before = [w.detach().clone() for w in m.day_weights]
        optimizer.zero_grad()
        m(torch.randn(2, 5, 4), torch.tensor(days)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
        moved = [not torch.equal(b, w) for b, w in zip(before, m.day_weights, strict=True)]
        assert moved == [d in days for d in range(3)]
