"""Sigmoid focal loss: hand values, torchvision agreement (value and grad), numerics, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvops

from hcral.losses.focal import FocalLoss, sigmoid_focal_loss

LN2 = math.log(2.0)


def test_hand_values():
    x = torch.tensor([0.0, 0.0, math.log(3.0)])  # p = 0.5, 0.5, 0.75
    t = torch.tensor([1.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)
    expected = torch.tensor(
        [
            0.25 * 0.5**2 * LN2,  # positive, p_t = 0.5: α (1-p_t)² · -ln 0.5
            0.75 * 0.5**2 * LN2,  # negative, p_t = 0.5, weight 1 - α
            0.25 * 0.25**2 * -math.log(0.75),  # positive, p_t = 0.75
        ]
    )
    torch.testing.assert_close(loss, expected)
    # γ = 0, no α: plain BCE, ln 2 for a zero logit whatever the target
    torch.testing.assert_close(
        sigmoid_focal_loss(x[:2], t[:2], alpha=None, gamma=0.0), torch.full((2,), LN2)
    )


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.5), (0.25, 0.0)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_value_and_grad(alpha, gamma, reduction):
    x = (torch.randn(7, 5, dtype=torch.float64) * 3).requires_grad_()
    t = (torch.rand(7, 5, dtype=torch.float64) > 0.7).double()
    ours = sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    ref = tvops.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_gradcheck_float64():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 3, dtype=torch.float64)  # soft targets too
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, t, 0.25, 1.5), (x,))


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_extreme_logits_finite(device, gamma):
    x = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], device=device, requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], device=device)
    loss = sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # the two wrong entries dominate: 0.25·100 (missed positive) + 0.75·100 (false positive)
    assert loss.item() == pytest.approx(100.0, rel=1e-4)


def test_torchvision_nan_where_we_are_finite():
    # γ < 1 at saturation: d(1-p_t)^γ is infinite at 0 and torchvision's gradient is NaN.
    x = torch.tensor([100.0], requires_grad=True)
    t = torch.tensor([1.0])
    tvops.sigmoid_focal_loss(x, t, gamma=0.5).sum().backward()
    tv_grad = x.grad.clone()
    x.grad = None
    sigmoid_focal_loss(x, t, gamma=0.5).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert not torch.isfinite(tv_grad).all()  # documents why we do not call torchvision


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty(reduction, device):
    x = torch.zeros(0, 3, device=device, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.zeros(0, 3, device=device), reduction=reduction)
    loss.sum().backward()
    assert loss.sum().item() == 0.0 and x.grad.shape == (0, 3)
    crit = FocalLoss()(x, torch.zeros(0, dtype=torch.long, device=device), x.new_zeros(0), 1.0)
    crit.backward()
    assert crit.item() == 0.0 and crit.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype, device):
    x = (torch.randn(6, 4) * 20).to(device, dtype).requires_grad_()
    t = (torch.rand(6, 4) > 0.5).to(device, dtype)
    loss = sigmoid_focal_loss(x, t, reduction="sum")
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(x.grad).all()
    ref = sigmoid_focal_loss(x.detach().float(), t.float(), reduction="sum")
    torch.testing.assert_close(loss, ref)


def test_autocast_bf16_and_float64():
    x = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 3, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = FocalLoss()(x * 50, labels, torch.rand(5), 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x64 = torch.randn(3, 2, dtype=torch.float64)
    assert sigmoid_focal_loss(x64, torch.ones_like(x64)).dtype == torch.float64


def test_criterion_hand_value(device):
    logits = torch.zeros(2, 2, device=device, requires_grad=True)
    labels = torch.tensor([0, 2], device=device)  # C = 2: the second prior is background
    ious = torch.tensor([0.9, 0.1], device=device)
    # one positive entry 0.25·0.25·ln2, three negative entries 0.75·0.25·ln2 each
    expected = 0.25 * LN2 * (0.25 + 3 * 0.75)
    loss = FocalLoss()(logits, labels, ious, avg_factor=1.0)
    assert loss.item() == pytest.approx(expected)
    loss2 = FocalLoss(loss_weight=3.0)(logits, labels, ious, avg_factor=torch.tensor(2.0))
    assert loss2.item() == pytest.approx(expected * 3 / 2)
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_criterion_matches_pure_function():
    logits = torch.randn(9, 4)
    labels = torch.randint(0, 5, (9,))
    onehot = torch.zeros(9, 5).scatter_(1, labels[:, None], 1.0)[:, :4]
    ref = sigmoid_focal_loss(logits, onehot, reduction="sum") / 3.0
    torch.testing.assert_close(FocalLoss()(logits, labels, torch.rand(9), 3.0), ref)


def test_errors():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="targets"):
        sigmoid_focal_loss(x, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="inputs"):
        sigmoid_focal_loss(torch.zeros(3, 2, dtype=torch.long), x)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    crit = FocalLoss()
    ious = torch.zeros(3)
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        crit(x, torch.tensor([0, 3, 1]), ious, 1.0)
    with pytest.raises(ValueError, match="labels must be in"):
        crit(x, torch.tensor([0, -1, 1]), ious, 1.0)
    with pytest.raises(ValueError, match="labels"):
        crit(x, torch.zeros(3), ious, 1.0)
    with pytest.raises(ValueError, match="ious"):
        crit(x, torch.zeros(3, dtype=torch.long), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="logits"):
        crit(torch.zeros(3), torch.zeros(3, dtype=torch.long), ious, 1.0)
    with pytest.raises(ValueError, match="avg_factor"):
        crit(x, torch.zeros(3, dtype=torch.long), ious, 0.0)
