"""IoU-family losses: hand values, torchvision agreement, Wise-IoU state, numerics, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvops

from hcral.losses.iou import (
    AlphaIoULoss,
    CIoULoss,
    DIoULoss,
    EIoULoss,
    FocalEIoULoss,
    GIoULoss,
    WiseIoULoss,
    alpha_iou_loss,
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    giou_loss,
    wise_iou_loss,
    wise_iou_momentum,
)

A = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
C = torch.tensor([[5.0, 5.0, 15.0, 15.0]])
IOU_AC = 25 / 175  # inter 5·5, union 100 + 100 - 25
# a 4x2 box against a 2x2 box sharing the corner: IoU 4/8, ρ² = 1, enclosing 4x2 (c² = 20)
W = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
S = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
EIOU_WS = 0.5 - 1 / 20 - (4 - 2) ** 2 / 16 - 0 / 4

CRITERIA = [
    GIoULoss,
    DIoULoss,
    CIoULoss,
    EIoULoss,
    FocalEIoULoss,
    AlphaIoULoss,
    lambda: AlphaIoULoss(penalty="giou"),
    lambda: AlphaIoULoss(penalty="ciou"),
    lambda: WiseIoULoss(version=1),
    lambda: WiseIoULoss(version=2),
    WiseIoULoss,
]


def _random_boxes(n: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=dtype) * 50
    wh = torch.rand(n, 2, dtype=dtype) * 30 + 1
    return torch.cat((xy, xy + wh), dim=1).to(device)


def test_hand_values():
    assert giou_loss(A, C).item() == pytest.approx(1 - (IOU_AC - (225 - 175) / 225))
    # centres (5,5), (10,10): ρ² = 50; enclosing 15x15: c² = 450
    assert diou_loss(A, C).item() == pytest.approx(1 - IOU_AC + 50 / 450)
    # equal shapes: no aspect (CIoU) and no width/height (EIoU) terms
    assert ciou_loss(A, C).item() == pytest.approx(1 - IOU_AC + 50 / 450)
    assert eiou_loss(A, C).item() == pytest.approx(1 - IOU_AC + 50 / 450)
    assert eiou_loss(W, S).item() == pytest.approx(1 - EIOU_WS)  # = 0.8
    # CIoU for W vs S: v = 4/π² (atan(2/2) - atan(4/2))², α = v / (1 - 0.5 + v)
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    assert ciou_loss(W, S).item() == pytest.approx(1 - 0.5 + 1 / 20 + v / (0.5 + v) * v)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (giou_loss, tvops.generalized_box_iou_loss),
        (diou_loss, tvops.distance_box_iou_loss),
        (ciou_loss, tvops.complete_box_iou_loss),
    ],
)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_value_and_grad(ours, theirs, reduction):
    pred = _random_boxes(16).requires_grad_()
    target = _random_boxes(16)
    a = ours(pred, target, reduction=reduction)
    (ga,) = torch.autograd.grad(a.sum(), pred)
    b = theirs(pred, target, reduction=reduction, eps=1e-7)
    (gb,) = torch.autograd.grad(b.sum(), pred)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


def test_focal_eiou_hand_value_and_detached_weight():
    pred = W.clone().double().requires_grad_()
    loss = focal_eiou_loss(pred, S.double(), gamma=0.5)
    assert loss.item() == pytest.approx(0.5**0.5 * 0.8)  # IoU^γ · L_EIoU
    (g,) = torch.autograd.grad(loss.sum(), pred)
    (g_eiou,) = torch.autograd.grad(eiou_loss(pred, S.double()).sum(), pred)
    torch.testing.assert_close(g, 0.5**0.5 * g_eiou)  # the weight is a constant
    live = focal_eiou_loss(pred, S.double(), gamma=0.5, detach_weight=False)
    (g_live,) = torch.autograd.grad(live.sum(), pred)
    assert not torch.allclose(g_live, g)
    assert torch.autograd.gradcheck(
        lambda p: focal_eiou_loss(p, S.double(), detach_weight=False), (pred,)
    )


def test_focal_eiou_zero_iou_is_finite_and_silent():
    pred = torch.tensor([[20.0, 20.0, 30.0, 30.0]], requires_grad=True)
    loss = focal_eiou_loss(pred, A, detach_weight=False)
    loss.sum().backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_alpha_iou():
    # α = 3: 1 - IoU³
    assert alpha_iou_loss(W, S).item() == pytest.approx(1 - 0.5**3)
    expected = 1 - IOU_AC**3 + ((225 - 175) / 225) ** 3
    assert alpha_iou_loss(A, C, penalty="giou").item() == pytest.approx(expected)
    assert alpha_iou_loss(A, C, penalty="diou").item() == pytest.approx(
        1 - IOU_AC**3 + (50 / 450) ** 3
    )
    # α = 1 gives back the plain members of the family
    p, t = _random_boxes(8), _random_boxes(8)
    torch.testing.assert_close(alpha_iou_loss(p, t, 1.0, "giou"), giou_loss(p, t))
    torch.testing.assert_close(alpha_iou_loss(p, t, 1.0, "diou"), diou_loss(p, t))
    torch.testing.assert_close(alpha_iou_loss(p, t, 1.0, "ciou"), ciou_loss(p, t))
    # α < 1 at IoU = 0 has an infinite derivative without safe_pow
    far = torch.tensor([[20.0, 20.0, 30.0, 30.0]], requires_grad=True)
    alpha_iou_loss(far, A, alpha=0.5, penalty="giou").sum().backward()
    assert torch.isfinite(far.grad).all()


def _wiou_v1_reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Wise-IoU v1 from raw coordinates: exp(ρ² / (Wg² + Hg²)*) · (1 - IoU)."""
    x1, y1, x2, y2 = pred.unbind(-1)
    u1, v1, u2, v2 = target.unbind(-1)
    iw = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0)
    ih = (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp(min=0)
    inter = iw * ih
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    wg = torch.maximum(x2, u2) - torch.minimum(x1, u1)
    hg = torch.maximum(y2, v2) - torch.minimum(y1, v1)
    rho2 = ((x1 + x2 - u1 - u2) / 2) ** 2 + ((y1 + y2 - v1 - v2) / 2) ** 2
    return torch.exp(rho2 / (wg**2 + hg**2).detach()) * (1 - inter / union)


def test_wise_iou_hand_values():
    l_iou = 1 - IOU_AC  # 6/7
    v1 = math.exp(50 / 450) * l_iou
    assert wise_iou_loss(A, C, version=1).item() == pytest.approx(v1)
    # v2: (L / mean)^0.5 with mean 0.5 → β = 12/7
    assert wise_iou_loss(A, C, 2, iou_loss_mean=0.5).item() == pytest.approx(
        (l_iou / 0.5) ** 0.5 * v1
    )
    # v3: β = 1 → r = 1 / (3 · 1.9^(1-3)) = 1.9² / 3; β = δ = 3 → r = 1
    assert wise_iou_loss(A, C, 3, iou_loss_mean=l_iou).item() == pytest.approx(1.9**2 / 3 * v1)
    assert wise_iou_loss(A, C, 3, iou_loss_mean=l_iou / 3).item() == pytest.approx(v1)


def test_wise_iou_v1_matches_reference_value_and_grad():
    pred = _random_boxes(12).requires_grad_()
    target = _random_boxes(12)
    ours = wise_iou_loss(pred, target, version=1)
    (g,) = torch.autograd.grad(ours.sum(), pred)
    ref = _wiou_v1_reference(pred, target)
    (g_ref,) = torch.autograd.grad(ref.sum(), pred)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g, g_ref)


def test_wise_iou_focusing_is_detached():
    pred = _random_boxes(6).requires_grad_()
    target = _random_boxes(6)
    (g1,) = torch.autograd.grad(wise_iou_loss(pred, target, 1).sum(), pred)
    for version in (2, 3):
        loss = wise_iou_loss(pred, target, version, iou_loss_mean=0.4)
        (g,) = torch.autograd.grad(loss.sum(), pred)
        focus = loss / wise_iou_loss(pred, target, 1)
        torch.testing.assert_close(g, focus.detach()[:, None] * g1)


def test_wise_iou_v3_is_non_monotonic():
    # r(β) = β / (δ α^(β-δ)) rises to its peak at β = 1/ln α ≈ 1.56, then falls
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(50, 4)
    shift = torch.linspace(0.1, 9.9, 50)  # shift 0 would give 0 / 0
    pred = target + torch.stack((shift, shift * 0, shift, shift * 0), dim=1)
    l_iou = 1 - (10 - shift) / (10 + shift)
    focus = wise_iou_loss(pred, target, 3, iou_loss_mean=0.3) / wise_iou_loss(pred, target, 1)
    peak = int(focus.argmax())
    assert 0 < peak < 49
    assert (l_iou[peak] / 0.3).item() == pytest.approx(1 / math.log(1.9), abs=0.1)


def test_wise_iou_running_mean_state():
    crit = WiseIoULoss(version=3, momentum=0.5)
    assert "iou_loss_mean.value" in crit.state_dict()
    pred, target = A.clone().requires_grad_(), C
    l_iou = 1 - IOU_AC
    crit(pred, target)  # first batch initialises the mean to its own L_IoU
    assert crit.iou_loss_mean.value.item() == pytest.approx(l_iou)
    crit(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), A)  # L_IoU = 0 → mean halves
    assert crit.iou_loss_mean.value.item() == pytest.approx(l_iou / 2)
    crit.eval()
    # β = L / (L / 2) = 2 → r = 2 / (3 · 1.9^-1); eval leaves the mean alone
    out = crit(pred, target)
    assert out.item() == pytest.approx(2 / (3 / 1.9) * math.exp(50 / 450) * l_iou, rel=1e-5)
    assert crit.iou_loss_mean.value.item() == pytest.approx(l_iou / 2)
    fresh = WiseIoULoss(version=3)
    fresh.load_state_dict(crit.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(pred, target), out)


def test_wise_iou_criterion_first_batch_v2_equals_v1():
    pred, target = _random_boxes(1), _random_boxes(1)
    # a single box is its own mean: β = 1, so v2's factor is 1
    torch.testing.assert_close(WiseIoULoss(2)(pred, target), WiseIoULoss(1)(pred, target))


def test_wise_iou_momentum():
    m = wise_iou_momentum(7000)
    assert (1 - m) ** 7000 == pytest.approx(0.05)
    with pytest.raises(ValueError, match="num_iters"):
        wise_iou_momentum(0)


def test_losses_bounded_for_any_corner_order():
    # ρ ≤ c must hold for inverted boxes too (they collapse to a point at their centre):
    # otherwise ρ²/c² is unbounded (hcral.boxes builds c from raw corners).
    g = torch.Generator().manual_seed(1)
    pred = (torch.rand(2000, 4, generator=g) * 20).requires_grad_()
    target = torch.rand(2000, 4, generator=g) * 20
    bounds = [
        (giou_loss(pred, target), 2.0),
        (diou_loss(pred, target), 2.0),
        (eiou_loss(pred, target), 4.0),  # 1 - IoU + three ratios each ≤ 1
        (wise_iou_loss(pred, target, 1), math.e),
    ]
    for loss, hi in bounds:
        assert loss.min() >= -1e-6 and loss.max() <= hi + 1e-5
    (g_pred,) = torch.autograd.grad(sum(b[0].sum() for b in bounds), pred)
    assert g_pred.abs().max() < 1e3


def test_inverted_box_is_its_centre_point():
    inverted = torch.tensor([[6.0, 6.0, 4.0, 4.0]])  # centre (5, 5)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    for fn in (giou_loss, diou_loss, ciou_loss, eiou_loss):
        torch.testing.assert_close(fn(inverted, A), fn(point, A))


def test_criterion_weight_avg_factor_loss_weight(device):
    pred = torch.cat((A, W)).to(device).requires_grad_()
    target = torch.cat((C, S)).to(device)
    per_box = giou_loss(pred, target).detach()
    weight = torch.tensor([2.0, 0.5], device=device)
    loss = GIoULoss(loss_weight=3.0)(pred, target, weight=weight, avg_factor=4.0)
    assert loss.item() == pytest.approx(3.0 * (2 * per_box[0] + 0.5 * per_box[1]).item() / 4)
    loss.backward()
    assert pred.grad.abs().sum() > 0


@pytest.mark.parametrize("make", CRITERIA)
def test_criteria_empty_degenerate_extreme(make, device):
    crit = make().to(device)
    empty = torch.zeros(0, 4, device=device, requires_grad=True)
    loss = crit(empty, empty.detach(), avg_factor=1.0)
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad
    pred = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],  # a point
            [10.0, 10.0, 0.0, 0.0],  # inverted
            [0.0, 0.0, 1e5, 1e5],  # huge
            [3.0, 3.0, 3.0, 3.0],  # a point on a point
            [0.0, 0.0, 10.0, 10.0],  # exact match
        ],
        device=device,
        requires_grad=True,
    )
    target = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 3, 3]]
        + [[0.0, 0.0, 10.0, 10.0]],
        device=device,
    )
    loss = crit(pred, target, avg_factor=5.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("make", CRITERIA)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_criteria_dtypes(make, dtype):
    pred = _random_boxes(5).to(dtype).requires_grad_()
    loss = make()(pred, _random_boxes(5).to(dtype), avg_factor=5.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_autocast_bf16():
    pred = _random_boxes(4, torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = WiseIoULoss()(pred * 1.0, _random_boxes(4, torch.float32)) + CIoULoss()(
            pred, _random_boxes(4, torch.float32)
        )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize(
    "fn", [giou_loss, diou_loss, ciou_loss, eiou_loss, focal_eiou_loss, alpha_iou_loss]
)
def test_pure_function_errors(fn):
    with pytest.raises(ValueError, match="pred_boxes"):
        fn(torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="target_boxes"):
        fn(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        fn(torch.zeros(3, 4), torch.zeros(3, 4), reduction="avg")


def test_parameter_errors():
    with pytest.raises(ValueError, match="version"):
        WiseIoULoss(version=4)
    with pytest.raises(ValueError, match="iou_loss_mean"):
        wise_iou_loss(A, C, version=3)
    with pytest.raises(ValueError, match="penalty"):
        AlphaIoULoss(penalty="eiou")
    with pytest.raises(ValueError, match="alpha"):
        alpha_iou_loss(A, C, alpha=0.0)
    with pytest.raises(ValueError, match="gamma"):
        FocalEIoULoss(gamma=-0.5)
    crit = GIoULoss()
    with pytest.raises(ValueError, match="weight"):
        crit(A, C, weight=torch.ones(2))
    with pytest.raises(ValueError, match="avg_factor"):
        crit(A, C, avg_factor=0)
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \(P, 4\)"):
        crit(A[None], C[None])
