"""L1 / smooth-L1 on deltas: hand values, torch agreement, criterion contract, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hcral.losses.l1 import L1Loss, l1_loss


def test_hand_values():
    pred = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    target = torch.zeros(1, 4)
    # |1| + |-2| + |3| + |0.5| = 6.5
    assert l1_loss(pred, target).item() == pytest.approx(6.5)
    # β = 1: |d| ≥ 1 → |d| - 0.5 (0.5 + 1.5 + 2.5); |d| = 0.5 → 0.5 · 0.25 / 1 = 0.125
    assert l1_loss(pred, target, beta=1.0).item() == pytest.approx(4.625)


@pytest.mark.parametrize("beta", [0.0, 0.3, 2.0])
def test_matches_torch(beta, device):
    pred = torch.randn(7, 4, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.randn(7, 4, dtype=torch.float64, device=device)
    ours = l1_loss(pred, target, beta, reduction="sum")
    ref = F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    torch.testing.assert_close(ours, ref)
    (g,) = torch.autograd.grad(ours, pred)
    (g_ref,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(g, g_ref)
    # "mean" averages per box (sums over the 4 offsets), not per element
    torch.testing.assert_close(l1_loss(pred, target, beta, "mean"), ref / 7)


def test_criterion_contract(device):
    boxes = torch.zeros(2, 4, device=device)
    pd = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 2.0]], device=device, requires_grad=True)
    td = torch.zeros(2, 4, device=device)
    w = torch.tensor([3.0, 1.0], device=device)
    loss = L1Loss(loss_weight=2.0)(
        boxes, boxes, weight=w, pred_deltas=pd, target_deltas=td, avg_factor=4.0
    )
    assert loss.item() == pytest.approx(2.0 * (3 * 1 + 1 * 2) / 4)  # 2.5
    loss.backward()
    torch.testing.assert_close(pd.grad, torch.tensor([[1.5, 0, 0, 0], [0, 0, 0, 0.5]]).to(device))


def test_criterion_requires_deltas():
    boxes = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="pred_deltas and target_deltas"):
        L1Loss()(boxes, boxes)
    with pytest.raises(ValueError, match="pred_deltas"):
        L1Loss()(boxes, boxes, pred_deltas=torch.zeros(3, 4), target_deltas=torch.zeros(3, 4))


def test_empty_extreme_and_half():
    e = torch.zeros(0, 4, requires_grad=True)
    loss = L1Loss()(e, e.detach(), pred_deltas=e, target_deltas=e.detach())
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad
    assert l1_loss(e, e.detach(), reduction="mean").item() == 0.0
    big = torch.full((3, 4), 6e4, dtype=torch.float16, requires_grad=True)
    loss = l1_loss(big, -big.detach(), reduction="sum")  # 12 · 1.2e5 overflows fp16, not fp32
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(12 * 1.2e5, rel=1e-3)
    x = torch.randn(3, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L1Loss(beta=0.1)(x, x, pred_deltas=x * 2, target_deltas=torch.zeros(3, 4))
    out.backward()
    assert torch.isfinite(x.grad).all()


def test_errors():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="pred_deltas"):
        l1_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="target_deltas"):
        l1_loss(x, torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="reduction"):
        l1_loss(x, x, reduction="mea")
    with pytest.raises(ValueError, match="beta"):
        L1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="weight"):
        L1Loss()(x, x, weight=torch.ones(2, 4), pred_deltas=x, target_deltas=x)
