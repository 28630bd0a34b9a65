"""Varifocal loss: hand values, masked reference form, numerics, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hcral.losses.varifocal import VarifocalLoss, varifocal_loss

LN2 = math.log(2.0)


def _reference_vfl(x, q, alpha=0.75, gamma=2.0):
    """The paper's two cases written with explicit positive/negative masks."""
    p = x.sigmoid()
    pos = q > 0
    pos_term = -q * (q * torch.log(p) + (1 - q) * torch.log(1 - p))
    neg_term = -alpha * p**gamma * torch.log(1 - p)
    return torch.where(pos, pos_term, neg_term)


def test_hand_values():
    x = torch.zeros(3)  # p = 0.5
    q = torch.tensor([0.8, 0.0, 1.0])
    # positive q=0.8: 0.8 · BCE = 0.8 ln2; negative: 0.75 · 0.5² · ln2; positive q=1: ln2
    expected = LN2 * torch.tensor([0.8, 0.75 * 0.25, 1.0])
    torch.testing.assert_close(varifocal_loss(x, q), expected)
    # without IoU weighting positives weigh 1: BCE(0, 0.8) = ln 2
    torch.testing.assert_close(
        varifocal_loss(x, q, iou_weighted=False), LN2 * torch.tensor([1.0, 0.1875, 1.0])
    )


def test_matches_reference_value_and_grad(device):
    x = torch.randn(6, 4, dtype=torch.float64, device=device).requires_grad_()
    q = torch.rand(6, 4, dtype=torch.float64, device=device) * (torch.rand(6, 4) > 0.5).to(device)
    ours = varifocal_loss(x, q, reduction="sum")
    (g_ours,) = torch.autograd.grad(ours, x)
    ref = _reference_vfl(x, q).sum()
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_gradcheck():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    q = torch.rand(4, 3, dtype=torch.float64) * (torch.rand(4, 3) > 0.5)
    assert torch.autograd.gradcheck(lambda x: varifocal_loss(x, q, gamma=1.5), (x,))


def test_criterion_hand_value_and_zero_iou_positive():
    logits = torch.zeros(3, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 2])  # C = 2
    ious = torch.tensor([0.6, 0.0, 0.4], requires_grad=True)
    neg = 0.75 * 0.25 * LN2
    # prior 0: pos entry 0.6·ln2 + 1 neg; prior 1: IoU 0 → both entries negative; prior 2: 2 neg
    loss = VarifocalLoss()(logits, labels, ious, avg_factor=2.0)
    assert loss.item() == pytest.approx((0.6 * LN2 + 5 * neg) / 2)
    loss.backward()
    assert ious.grad is None and torch.isfinite(logits.grad).all()


def test_extreme_logits_finite(device):
    x = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], device=device, requires_grad=True)
    labels = torch.tensor([0, 1], device=device)
    loss = VarifocalLoss()(x, labels, torch.tensor([0.7, 0.9], device=device), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty(reduction):
    x = torch.zeros(0, 2, requires_grad=True)
    loss = varifocal_loss(x, torch.zeros(0, 2), reduction=reduction)
    loss.sum().backward()
    assert loss.sum().item() == 0.0
    crit = VarifocalLoss()(x, torch.zeros(0, dtype=torch.long), torch.zeros(0), 1.0)
    assert crit.item() == 0.0 and crit.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    x = (torch.randn(5, 3) * 30).to(dtype).requires_grad_()
    labels = torch.tensor([0, 3, 2, 1, 3])
    loss = VarifocalLoss()(x, labels, torch.rand(5).to(dtype), 2.0)
    loss.backward()
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == want and torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_autocast_bf16():
    x = torch.randn(5, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = VarifocalLoss()(x * 100, torch.tensor([0, 3, 2, 1, 3]), torch.rand(5), 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="targets"):
        varifocal_loss(x, torch.zeros(2))
    with pytest.raises(ValueError, match="reduction"):
        varifocal_loss(x, x, reduction=None)
    with pytest.raises(ValueError, match="alpha"):
        VarifocalLoss(alpha=-0.1)
    with pytest.raises(ValueError, match="labels"):
        VarifocalLoss()(x, torch.tensor([0.0, 1.0]), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="logits"):
        VarifocalLoss()(x.long(), torch.tensor([0, 1]), torch.zeros(2), 1.0)
