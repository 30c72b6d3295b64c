"""Cosine learning-rate schedule with linear warm-up, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.schedules import WarmupCosine, cosine_with_warmup


def test_warmup_cosine_values_by_hand():
    # 10 steps, 2 of warm-up: factors (s+1)/3 for s < 2, then 0.5 (1 + cos(pi (s-2)/8))
    schedule = WarmupCosine(total_steps=10, warmup_steps=2)
    expected = [
        1 / 3,
        2 / 3,
        1.0,
        0.5 * (1 + math.cos(math.pi / 8)),
        0.5 * (1 + math.cos(math.pi / 4)),
        0.5 * (1 + math.cos(3 * math.pi / 8)),
        0.5,
        0.5 * (1 + math.cos(5 * math.pi / 8)),
        0.5 * (1 + math.cos(3 * math.pi / 4)),
        0.5 * (1 + math.cos(7 * math.pi / 8)),
        0.0,
    ]
    assert [schedule(s) for s in range(11)] == pytest.approx(expected)


def test_min_lr_ratio_is_the_floor():
    schedule = WarmupCosine(total_steps=4, warmup_steps=0, min_lr_ratio=0.1)
    # 0.1 + 0.9 * 0.5 (1 + cos(pi s / 4))
    assert [schedule(s) for s in range(5)] == pytest.approx(
        [
            1.0,
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)),
            0.55,
            0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)),
            0.1,
        ]
    )


def test_lambda_lr_steps_the_optimizer_learning_rate():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.2)
    scheduler = cosine_with_warmup(optimizer, total_steps=20, warmup_fraction=0.1)  # 2 warm-up steps
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
    assert lrs[11] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 9 / 18)))
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # decays monotonically after warm-up
    # the schedule object is saved with the scheduler, so a resumed run continues the same curve
    assert scheduler.state_dict()["lr_lambdas"][0]["warmup_steps"] == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_steps": 0, "warmup_steps": 0}, "total_steps"),
        ({"total_steps": 5, "warmup_steps": 5}, "warmup_steps"),
        ({"total_steps": 5, "warmup_steps": 1, "min_lr_ratio": 2.0}, "min_lr_ratio"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosine(**kwargs)


def test_bad_warmup_fraction_names_the_setting():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="scheduler.warmup_fraction"):
        cosine_with_warmup(optimizer, total_steps=10, warmup_fraction=1.5)
