"""HCRAR: hand-computed values, gradients, the r̄ EMA, switches and degenerate boxes."""

from __future__ import annotations

import math

import pytest
import torch

from hcral.boxes import aligned_giou, aligned_iou, centre_distance_sq, enclosing_diag_sq
from hcral.losses import build_reg_loss
from hcral.losses.hcrar import (
    HCRARLoss,
    centre_factor,
    hcrar_loss,
    hcrar_weight,
    iou_and_centre_ratio,
    rci_coefficient,
)

U_STAR = 1 / 2.2  # γ = 1.2


def f_focus(u, gamma=1.2, delta=1.5):
    u_star = 1 / (1 + gamma)
    return 1 + (delta - 1) * u * (1 - u) ** gamma / (u_star * (1 - u_star) ** gamma)


def _boxes(dtype=torch.float64):
    # box 0: IoU 0.5, GIoU 0.5, centres 0.5 apart, enclosing diagonal² 8
    # box 1: disjoint, IoU 0, GIoU -0.5, centres 3 apart, enclosing diagonal² 17
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [3.0, 0.0, 4.0, 1.0]], dtype=dtype)
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=dtype)
    return pred.requires_grad_(), target


def test_hand_computed_single_box():
    pred, target = _boxes()
    got = hcrar_loss(pred[:1], target[:1], torch.tensor([0.3]))  # r̃ = r / mean(r) = 1
    assert got.item() == pytest.approx(math.exp(0.25 / 8) * f_focus(0.5) * 0.5)


def test_hand_computed_disjoint_box_and_r_max():
    pred, target = _boxes()
    s = torch.tensor([0.5])
    r = (0.5 + 0.1 + 0.001) / 0.001  # IoU 0: r = (s - α + ep) / ep, F(0) = 1
    got = hcrar_loss(pred[1:], target[1:], s, r_mean=1.0)
    assert got.item() == pytest.approx(r * math.exp(9 / 17) * 1.5)
    got = hcrar_loss(pred[1:], target[1:], s, r_mean=1.0, r_max=10.0)
    assert got.item() == pytest.approx(10 * math.exp(9 / 17) * 1.5)


def test_hand_computed_batch_mean_normalisation():
    pred, target = _boxes()
    s = torch.tensor([0.3, 0.5])
    r = [(0.3 + 0.101) / 0.501, (0.5 + 0.101) / 0.001]
    mean = sum(r) / 2
    per_box = [
        r[0] / mean * math.exp(0.25 / 8) * f_focus(0.5) * 0.5,
        r[1] / mean * math.exp(9 / 17) * 1.5,
    ]
    got = hcrar_loss(pred, target, s, reduction="none")
    torch.testing.assert_close(got, torch.tensor(per_box, dtype=torch.float64))
    got = hcrar_loss(pred, target, s, focusing=False, centre=False, reduction="sum")
    assert got.item() == pytest.approx(r[0] / mean * 0.5 + r[1] / mean * 1.5)


def _random_boxes(p=20, device="cpu", dtype=torch.float32):
    xy = torch.rand(p, 2, dtype=dtype) * 50
    target = torch.cat((xy, xy + 5 + torch.rand(p, 2, dtype=dtype) * 30), 1)
    pred = target + torch.randn(p, 4, dtype=dtype) * 4
    return pred.to(device).requires_grad_(), target.to(device), torch.rand(p).to(device)


def test_gradient_is_weighted_giou_gradient(device):
    pred, target, scores = _random_boxes(device=device)
    (grad,) = torch.autograd.grad(hcrar_loss(pred, target, scores, reduction="sum"), pred)
    ious = aligned_iou(pred.detach(), target)
    w = hcrar_weight(pred, target, rci_coefficient(scores, ious), ious)
    (expected,) = torch.autograd.grad(((1 - aligned_giou(pred, target)) * w).sum(), pred)
    torch.testing.assert_close(grad, expected)


def test_gradcheck_float64_with_detached_weight():
    pred, target, scores = _random_boxes(p=5, dtype=torch.float64)
    ious = aligned_iou(pred.detach(), target)
    w = hcrar_weight(pred, target, rci_coefficient(scores, ious), ious)
    assert torch.autograd.gradcheck(lambda b: ((1 - aligned_giou(b, target)) * w).sum(), (pred,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_fused_geometry_equals_boxes_module(dtype):
    pred, target, _ = _random_boxes(p=50)
    pred = pred.detach()
    pred[:5, 2:] = pred[:5, :2] - 3  # inverted boxes
    pred[5:8, 2:] = pred[5:8, :2]  # points
    target[8:10] = pred[8:10]  # identical
    pred, target = pred.to(dtype), target.to(dtype)
    iou, ratio = iou_and_centre_ratio(pred, target)
    torch.testing.assert_close(iou, aligned_iou(pred, target))
    expected = centre_distance_sq(pred, target) / enclosing_diag_sq(pred, target)
    torch.testing.assert_close(ratio, expected)
    torch.testing.assert_close(torch.exp(ratio), centre_factor(pred, target))
    w = hcrar_weight(pred, target, torch.ones(50), iou)
    torch.testing.assert_close(
        w, hcrar_weight(pred, target, torch.ones(50), iou, centre_ratio=ratio)
    )


def test_weights_are_detached():
    pred, target, scores = _random_boxes()
    ious = aligned_iou(pred, target)  # with grad: the weight must still come out detached
    w = hcrar_weight(pred, target, rci_coefficient(scores, ious), ious)
    assert ious.requires_grad and not w.requires_grad


def test_criterion_ema_avg_factor_and_loss_weight():
    crit = HCRARLoss(m_r=0.01, loss_weight=2.5)
    pred, target, scores = _random_boxes()
    loss = crit(pred, target, scores=scores, avg_factor=4.0)
    expected = hcrar_loss(pred, target, scores, reduction="sum") * 2.5 / 4.0
    torch.testing.assert_close(loss, expected)
    first = rci_coefficient(scores, aligned_iou(pred.detach(), target)).mean()
    torch.testing.assert_close(crit.r_mean.value, first)  # initialised, not blended with 1
    pred2, target2, scores2 = _random_boxes(p=12)
    loss = crit(pred2, target2, scores=scores2, avg_factor=12.0)
    second = rci_coefficient(scores2, aligned_iou(pred2.detach(), target2)).mean()
    r_bar = 0.99 * first + 0.01 * second
    torch.testing.assert_close(crit.r_mean.value, r_bar)
    expected = hcrar_loss(pred2, target2, scores2, r_mean=r_bar, reduction="sum") * 2.5 / 12
    torch.testing.assert_close(loss, expected)


def test_criterion_eval_state_dict_and_weight():
    crit = HCRARLoss()
    pred, target, scores = _random_boxes()
    crit(pred, target, scores=scores)
    value = crit.r_mean.value.clone()
    crit.eval()
    crit(*_random_boxes()[:2], scores=torch.rand(20))
    torch.testing.assert_close(crit.r_mean.value, value)
    other = HCRARLoss()
    other.load_state_dict(crit.state_dict())
    torch.testing.assert_close(other.r_mean.value, value)
    other.eval()
    weight = torch.rand(20)
    got = other(pred, target, scores=scores, weight=weight)
    torch.testing.assert_close(
        got, hcrar_loss(pred, target, scores, r_mean=value, weight=weight, reduction="sum")
    )


def test_degenerate_boxes_and_empty_batch_are_finite(device):
    pred = torch.tensor(
        [[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 12.0, 12.0], [1, 1, 2, 2]],
        device=device,
        requires_grad=True,
    )
    target = torch.tensor(
        [[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [1, 1, 2, 2]],
        device=device,
    )
    scores = torch.tensor([1.0, 0.0, 0.9, 0.5], device=device)
    loss = HCRARLoss().to(device)(pred, target, scores=scores, avg_factor=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    empty = torch.zeros(0, 4, device=device, requires_grad=True)
    loss = HCRARLoss().to(device)(empty, empty.detach(), scores=torch.zeros(0, device=device))
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_boxes(dtype, device):
    pred, target, scores = _random_boxes(device=device)
    pred = (pred.detach() * 10).to(dtype).requires_grad_()  # areas beyond fp16's range
    loss = HCRARLoss().to(device)(pred, (target * 10).to(dtype), scores=scores.to(dtype))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()


def test_bad_inputs_name_the_argument():
    pred, target, scores = _random_boxes()
    with pytest.raises(ValueError, match="scores"):
        hcrar_loss(pred, target, scores[:3])
    with pytest.raises(ValueError, match="scores"):
        HCRARLoss()(pred, target)
    with pytest.raises(ValueError, match="target_boxes"):
        hcrar_loss(pred, target[:, :3], scores)
    with pytest.raises(ValueError, match="weight"):
        hcrar_loss(pred, target, scores, weight=torch.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        HCRARLoss(alpha=0.1)
    with pytest.raises(ValueError, match="ep"):
        hcrar_loss(pred, target, scores, ep=0.0)
    with pytest.raises(ValueError, match="m_r"):
        HCRARLoss(m_r=2.0)


def test_registry_builds_it_with_switches():
    crit = build_reg_loss("hcrar", focusing=False, loss_weight=1.5)
    assert isinstance(crit, HCRARLoss) and not crit.focusing and crit.centre
