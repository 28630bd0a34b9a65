"""Learning-rate schedule: warm-up, step decay and linear batch scaling by hand."""

from __future__ import annotations

import pytest
import torch

from hcral.engine.schedule import LRSchedule, lr_at, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(0.01, 16, 16) == pytest.approx(0.01)
    assert scaled_lr(0.01, 4, 16) == pytest.approx(0.0025)
    assert scaled_lr(0.01, 64, 16) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="global_batch=0"):
        scaled_lr(0.01, 0, 16)


def test_warmup_is_linear_from_ratio_to_one():
    kw = dict(base_lr=0.01, iters_per_epoch=100, warmup_iters=500, warmup_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.001)  # ratio x base at iteration 0
    assert lr_at(250, **kw) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))  # halfway: 0.0055
    assert lr_at(499, **kw) == pytest.approx(0.01 * (0.1 + 0.9 * 499 / 500))
    assert lr_at(500, **kw) == pytest.approx(0.01)  # warm-up over


def test_step_decay_at_epoch_boundaries():
    kw = dict(base_lr=0.02, iters_per_epoch=10, warmup_iters=0, lr_steps=[8, 11])
    assert lr_at(79, **kw) == pytest.approx(0.02)  # last iteration of epoch 7
    assert lr_at(80, **kw) == pytest.approx(0.002)  # first iteration of epoch 8
    assert lr_at(109, **kw) == pytest.approx(0.002)
    assert lr_at(110, **kw) == pytest.approx(0.0002)  # epoch 11
    assert lr_at(10_000, **kw) == pytest.approx(0.0002)


def test_warmup_multiplies_the_decayed_rate():
    # a decay that lands inside the warm-up (tiny epochs) still composes multiplicatively
    lr = lr_at(15, base_lr=1.0, iters_per_epoch=10, warmup_iters=20, warmup_ratio=0.5, lr_steps=[1])
    assert lr == pytest.approx(0.1 * (0.5 + 0.5 * 15 / 20))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(iteration=-1), "iteration"),
        (dict(iters_per_epoch=0), "iters_per_epoch"),
        (dict(warmup_ratio=0.0), "warmup_ratio"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(iteration=0, base_lr=0.01, iters_per_epoch=10, warmup_ratio=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        lr_at(args.pop("iteration"), **args)


def test_schedule_object_sets_every_param_group():
    opt = torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))]},
            {"params": [torch.nn.Parameter(torch.zeros(1))]},
        ],
        lr=123.0,
    )
    sched = LRSchedule(
        base_lr=0.04, iters_per_epoch=5, warmup_iters=4, warmup_ratio=0.25, lr_steps=(2,)
    )
    assert sched.apply(opt, 2) == pytest.approx(0.04 * (0.25 + 0.75 * 0.5))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.025)] * 2
    assert sched(10) == pytest.approx(0.004)
