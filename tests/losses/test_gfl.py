"""Quality focal loss: hand values, reference form, focal-loss limit, numerics, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hcral.losses.focal import sigmoid_focal_loss
from hcral.losses.gfl import QualityFocalLoss, quality_focal_loss

LN2 = math.log(2.0)


def _reference_qfl(x: torch.Tensor, labels: torch.Tensor, score: torch.Tensor, beta: float):
    """The GFL paper's two-part form: every entry as a negative, positives' entry replaced."""
    sig = x.sigmoid()
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    loss = loss * sig.pow(beta)
    pos = torch.nonzero(labels < x.shape[1]).squeeze(1)
    c = labels[pos]
    sf = score[pos] - sig[pos, c]
    loss[pos, c] = F.binary_cross_entropy_with_logits(
        x[pos, c], score[pos], reduction="none"
    ) * sf.abs().pow(beta)
    return loss


def test_hand_values():
    x = torch.zeros(4)  # σ = 0.5; BCE(0, y) = ln 2 for any y
    y = torch.tensor([1.0, 0.5, 0.0, 0.8])
    # |y - σ|² = 0.25, 0, 0.25, 0.09
    expected = LN2 * torch.tensor([0.25, 0.0, 0.25, 0.09])
    torch.testing.assert_close(quality_focal_loss(x, y), expected)
    # σ = 0.75 and y = 0.75: the minimum, value 0 and zero gradient
    x2 = torch.tensor([math.log(3.0)], dtype=torch.float64, requires_grad=True)
    loss = quality_focal_loss(x2, torch.tensor([0.75], dtype=torch.float64))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert x2.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_one_hot_targets_reduce_to_focal_loss_without_alpha():
    x = torch.randn(6, 3, dtype=torch.float64) * 4
    t = (torch.rand(6, 3) > 0.6).double()
    torch.testing.assert_close(
        quality_focal_loss(x, t, beta=2.0), sigmoid_focal_loss(x, t, alpha=None, gamma=2.0)
    )


def test_criterion_matches_reference_value_and_grad(device):
    x = (torch.randn(8, 4, dtype=torch.float64, device=device) * 2).requires_grad_()
    labels = torch.tensor([0, 4, 2, 4, 3, 1, 4, 0], device=device)
    ious = torch.rand(8, dtype=torch.float64, device=device)
    ours = QualityFocalLoss()(x, labels, ious, avg_factor=5.0)
    (g_ours,) = torch.autograd.grad(ours, x)
    ref = _reference_qfl(x, labels, ious, 2.0).sum() / 5.0
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_criterion_hand_value_and_ious_detached():
    logits = torch.zeros(2, 2, requires_grad=True)
    labels = torch.tensor([1, 2])  # C = 2: prior 1 is background
    ious = torch.tensor([0.8, 0.3], requires_grad=True)
    # prior 0: class 1 target 0.8 → 0.09 ln2, class 0 target 0 → 0.25 ln2; prior 1: 2 × 0.25 ln2
    loss = QualityFocalLoss(loss_weight=2.0)(logits, labels, ious, avg_factor=1.0)
    assert loss.item() == pytest.approx(2.0 * LN2 * (0.09 + 0.25 * 3))
    loss.backward()
    assert ious.grad is None and logits.grad.abs().sum() > 0


def test_gradcheck_and_nonintegral_beta():
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: quality_focal_loss(x, y, beta=2.0), (x,))
    # β < 1 at |y - σ| = 0 would be an infinite derivative without safe_pow
    xs = torch.tensor([0.0], requires_grad=True)
    quality_focal_loss(xs, torch.tensor([0.5]), beta=0.5).sum().backward()
    assert torch.isfinite(xs.grad).all()


def test_extreme_logits_finite(device):
    x = torch.tensor([[100.0, -100.0, 100.0]], device=device, requires_grad=True)
    loss = QualityFocalLoss()(
        x, torch.tensor([1], device=device), torch.tensor([0.9]).to(device), 1
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # entry 0 (neg, σ=1): 100·1; entry 1 (pos y=0.9, σ≈0): 90·0.81; entry 2 like entry 0
    assert loss.item() == pytest.approx(200 + 0.9 * 100 * 0.81, rel=1e-4)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty(reduction):
    x = torch.zeros(0, 4, requires_grad=True)
    loss = quality_focal_loss(x, torch.zeros(0, 4), reduction=reduction)
    loss.sum().backward()
    assert loss.sum().item() == 0.0 and not torch.isnan(loss).any()
    crit = QualityFocalLoss()(x, torch.zeros(0, dtype=torch.long), torch.zeros(0), 1.0)
    assert crit.item() == 0.0 and crit.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_autocast(dtype):
    x = (torch.randn(5, 3) * 30).to(dtype).requires_grad_()
    labels = torch.tensor([0, 3, 2, 1, 3])
    loss = QualityFocalLoss()(x, labels, torch.rand(5).to(dtype), 2.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(x.grad).all()
    x32 = torch.randn(5, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = QualityFocalLoss()(x32 * 100, labels, torch.rand(5), 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x32.grad).all()


def test_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="targets"):
        quality_focal_loss(x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        quality_focal_loss(x, x, reduction="max")
    with pytest.raises(ValueError, match="beta"):
        QualityFocalLoss(beta=-2.0)
    with pytest.raises(ValueError, match="labels must be in"):
        QualityFocalLoss()(x, torch.tensor([0, 4]), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="ious"):
        QualityFocalLoss()(x, torch.tensor([0, 3]), torch.zeros(2, dtype=torch.long), 1.0)
