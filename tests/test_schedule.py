"""diablo.schedule: warm-up + cosine against values worked out by hand; the optimiser gets them."""

from __future__ import annotations

import math

import pytest
import torch

from diablo.config import TrainConfig
from diablo.schedule import apply_schedule, lr_factor, peaks, total_steps


def config(**changes) -> TrainConfig:
    base = dict(backbone="mobilenet_v2", pretrained="none", epochs=3, steps_per_epoch=37, lr=1e-3,
                new_lr_factor=10.0, schedule="cosine", warmup_steps=10, min_lr_factor=0.1)
    return TrainConfig(**{**base, **changes})


def test_constant_is_one_everywhere():
    c = config(schedule="constant")
    assert {lr_factor(c, s) for s in range(total_steps(c))} == {1.0}


def test_total_steps_is_capped_by_max_steps():
    assert total_steps(config()) == 111
    assert total_steps(config(max_steps=50)) == 50


@pytest.mark.parametrize("step, expected", [
    (0, 0.1), (4, 0.5), (9, 1.0),          # linear warm-up over 10 steps: (step + 1) / 10
    (10, 1.0),                              # the peak, where the cosine starts
    (60, 0.1 + 0.9 * 0.5),                  # half-way through the 100 decay steps: cos(pi / 2) = 0
    (35, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
    (110, 0.1),                             # the last step (111 in all) sits on the floor
])
def test_cosine_by_hand(step, expected):
    assert lr_factor(config(), step) == pytest.approx(expected)


def test_the_curve_rises_then_falls():
    c = config()
    factors = [lr_factor(c, s) for s in range(total_steps(c))]
    assert all(a < b for a, b in zip(factors[:10], factors[1:10], strict=False))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_apply_schedule_sets_each_groups_rate_and_decay():
    backbone, new = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [backbone], "lr": 123.0}, {"params": [new], "lr": 456.0}])
    apply_schedule(opt, config(weight_decay=0.01), 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-2 * 0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]


def test_the_dictionarys_own_group_gets_its_factor():
    backbone, new, dictionary = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.Adam([{"params": [p], "lr": 1.0} for p in (backbone, new, dictionary)])
    c = config(dictionary_lr_factor=30.0)
    assert peaks(c, 3) == pytest.approx((1e-3, 1e-2, 0.3))
    assert peaks(c, 2) == pytest.approx((1e-3, 1e-2))  # no group of its own: the new parts' rate
    apply_schedule(opt, c, 9)  # the warm-up's last step: the peaks
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2, 0.3])
