"""HCRAC: hand-computed values, a dense reference, gradients, EMA state, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hcral.losses import build_cls_loss
from hcral.losses.ghm import bin_histogram, ghm_beta, gradient_bins, weighted_bce
from hcral.losses.hcrac import HCRACLoss, hcrac_loss, hcrac_weight, rci_numerator

LN2 = math.log(2)


def reference_hcrac(logits, labels, ious, bins=20, mu=5.0, theta=0.7, rho_mean=None, eps=1e-3):
    """SPEC §2 entry by entry: one-hot targets, a loop over priors for ω and ρ."""
    p_, c = logits.shape
    y = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
    prob = logits.detach().sigmoid()
    idx = ((prob - y).abs() * bins).long().clamp(max=bins - 1)
    counts = torch.bincount(idx.flatten(), minlength=bins).to(logits.dtype)
    beta = logits.numel() / (counts[idx] * (counts > 0).sum())
    omega, rho = torch.ones_like(prob), torch.ones_like(prob)
    nums = {}
    for i in range(p_):
        u = float(ious[i])
        if labels[i] < c:
            omega[i, labels[i]] = 1 + u
            nums[i] = math.exp(mu * max(u - float(prob[i, labels[i]]), 0.0)) - 1
        else:
            omega[i] = 1 + u if u <= theta else (1 + theta) * (1 - u) / (1 - theta)
    if rho_mean is None:
        rho_mean = sum(nums.values()) / max(len(nums), 1)
    for i, num in nums.items():
        rho[i, labels[i]] = num / max(rho_mean, eps)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (beta * omega * rho * bce).sum() / logits.numel()


def _batch(p=40, c=5, device="cpu", dtype=torch.float32):
    logits = (torch.randn(p, c, dtype=dtype) * 2).to(device).requires_grad_()
    labels = torch.randint(0, c + 1, (p,)).to(device)
    ious = torch.rand(p, dtype=dtype).to(device)
    return logits, labels, ious


def test_hand_computed_single_positive():
    # s = 0.5, u = 0.9, one bin in use: β = 1, ω = 1 + u, ρ = num / mean(num) = 1.
    logits = torch.zeros(1, 1, dtype=torch.float64)
    got = hcrac_loss(logits, torch.tensor([0]), torch.tensor([0.9], dtype=torch.float64), bins=2)
    assert got.item() == pytest.approx(1.9 * LN2)


def test_hand_computed_positive_and_high_iou_negative():
    logits = torch.zeros(2, 1, dtype=torch.float64)
    labels, ious = torch.tensor([0, 1]), torch.tensor([0.9, 0.8], dtype=torch.float64)
    omega_neg = 1.7 * 0.2 / 0.3  # above θ = 0.7: (1 + θ)(1 - u)/(1 - θ)
    got = hcrac_loss(logits, labels, ious, bins=2)
    assert got.item() == pytest.approx((1.9 + omega_neg) * LN2 / 2)
    # an EMA ρ̄ twice this batch's numerator halves the positive's ρ
    rho_mean = 2 * math.expm1(5 * 0.4)
    got = hcrac_loss(logits, labels, ious, bins=2, rho_mean=rho_mean)
    assert got.item() == pytest.approx((0.95 + omega_neg) * LN2 / 2)


def test_hand_computed_over_confident_positive_gets_no_class_loss():
    # s = sigmoid(3) > u = 0.5: ρ = 0, only the background prior (u = 0.2, ω = 1.2) counts.
    logits = torch.tensor([[3.0], [0.0]], dtype=torch.float64)
    labels, ious = torch.tensor([0, 1]), torch.tensor([0.5, 0.2], dtype=torch.float64)
    got = hcrac_loss(logits, labels, ious, bins=2, rho_mean=1.0)
    # g = 1 - 0.953 -> bin 0, g = 0.5 -> bin 1: N = 2, n = 2, β = 2 / (1 · 2) = 1 each
    assert got.item() == pytest.approx(1.2 * LN2 / 2)


@pytest.mark.parametrize("theta,mu", [(0.7, 5.0), (0.5, 2.0)])
def test_matches_dense_reference(theta, mu, device):
    logits, labels, ious = _batch(device=device, dtype=torch.float64)
    got = hcrac_loss(logits, labels, ious, bins=10, mu=mu, theta=theta)
    expected = reference_hcrac(logits, labels, ious, bins=10, mu=mu, theta=theta)
    torch.testing.assert_close(got, expected)


def test_gradient_is_weighted_bce_gradient(device):
    logits, labels, ious = _batch(device=device)
    (grad,) = torch.autograd.grad(hcrac_loss(logits, labels, ious), logits)
    idx, scores = gradient_bins(logits, labels, 20)
    counts = bin_histogram(idx, 20)
    weight = hcrac_weight(idx, labels, ious, scores, ghm_beta(counts, counts))
    target = F.one_hot(labels, 6)[:, :5].float()
    expected = weight * (logits.detach().sigmoid() - target) / logits.numel()
    torch.testing.assert_close(grad, expected)


def test_gradcheck_float64_with_detached_weight():
    # The weights depend on the detached score, so finite differences of the loss itself
    # would see them move; the analytic gradient treats them as constants (SPEC: detached).
    logits, labels, ious = _batch(p=6, c=3, dtype=torch.float64)
    labels[:2] = torch.tensor([0, 2])  # at least two positives
    idx, scores = gradient_bins(logits, labels, 20)
    counts = bin_histogram(idx, 20)
    weight = hcrac_weight(idx, labels, ious, scores, ghm_beta(counts, counts))
    assert torch.autograd.gradcheck(lambda x: weighted_bce(x, labels, weight), (logits,))


def test_reductions():
    logits, labels, ious = _batch()
    none = hcrac_loss(logits, labels, ious, reduction="none")
    assert none.shape == logits.shape
    torch.testing.assert_close(none.sum(), hcrac_loss(logits, labels, ious, reduction="sum"))
    torch.testing.assert_close(none.mean(), hcrac_loss(logits, labels, ious))


def test_switches_remove_their_factor():
    logits, labels, _ = _batch()
    neg = labels == 5
    ious_a = torch.rand(40)
    ious_b = torch.where(neg, torch.rand(40), ious_a)  # only background IoUs differ
    a = hcrac_loss(logits, labels, ious_a, use_omega=False)
    b = hcrac_loss(logits, labels, ious_b, use_omega=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(
        hcrac_loss(logits, labels, ious_a), hcrac_loss(logits, labels, ious_b)
    )
    # without ρ the positives' IoUs enter only through ω = 1 + u
    with torch.no_grad():
        wide = hcrac_loss(logits, labels, ious_a, use_rci=False, reduction="none")
        plain = hcrac_loss(logits, labels, ious_a, use_rci=False, use_omega=False, reduction="none")
    pos = ~neg
    cols = labels[pos]
    ratio = wide[pos, cols] / plain[pos, cols]
    torch.testing.assert_close(ratio, 1 + ious_a[pos])


def test_criterion_first_batch_then_ema():
    crit = HCRACLoss(m_ghm=0.75, m_rci=0.01)
    logits, labels, ious = _batch()
    torch.testing.assert_close(crit(logits, labels, ious, 7.0), hcrac_loss(logits, labels, ious))
    pos = labels < 5
    _, scores = gradient_bins(logits, labels, 20)
    first = rci_numerator(ious, scores)[pos].mean()
    torch.testing.assert_close(crit.rho_mean.value, first)
    logits2, labels2, ious2 = _batch(p=30)
    loss = crit(logits2, labels2, ious2, 1.0)
    _, scores2 = gradient_bins(logits2, labels2, 20)
    second = rci_numerator(ious2, scores2)[labels2 < 5].mean()
    torch.testing.assert_close(crit.rho_mean.value, 0.99 * first + 0.01 * second)
    expected = hcrac_loss(
        logits2,
        labels2,
        ious2,
        bin_counts=crit.bin_counts.value.clone(),
        rho_mean=crit.rho_mean.value.clone(),
    )
    torch.testing.assert_close(loss, expected)


def test_criterion_eval_and_state_dict():
    crit = HCRACLoss()
    crit(*_batch(), 1.0)
    state = {k: v.clone() for k, v in crit.state_dict().items()}
    crit.eval()
    crit(*_batch(p=20), 1.0)
    for k, v in crit.state_dict().items():
        torch.testing.assert_close(v, state[k])
    other = HCRACLoss()
    other.load_state_dict(state)
    logits, labels, ious = _batch(p=20)
    other.eval()
    torch.testing.assert_close(other(logits, labels, ious, 1.0), crit(logits, labels, ious, 1.0))


def test_no_positives_leaves_rho_mean_alone_and_stays_finite(device):
    crit = HCRACLoss().to(device)
    logits = torch.randn(10, 3, device=device, requires_grad=True)
    labels = torch.full((10,), 3, device=device)
    loss = crit(logits, labels, torch.zeros(10, device=device), 1.0)  # no GT at all: u = 0
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert not bool(crit.rho_mean.initialized)
    # no GT: every ω is 1, so this is plain GHM-C
    torch.testing.assert_close(loss, hcrac_loss(logits, labels, torch.zeros(10, device=device)))


@pytest.mark.parametrize("value", [100.0, -100.0])
def test_saturated_logits_and_single_sample(value, device):
    for p in (1, 7):
        logits = torch.full((p, 4), value, device=device, requires_grad=True)
        labels = torch.arange(p, device=device) % 5
        loss = HCRACLoss().to(device)(logits, labels, torch.full((p,), 0.6, device=device), 1.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_is_finite(dtype, device):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("fp16 autocast is a CUDA feature")
    logits, labels, ious = _batch(device=device)
    lin = torch.nn.Linear(5, 5).to(device)
    with torch.autocast(device.type, dtype=dtype):
        loss = HCRACLoss().to(device)(lin(logits), labels, ious.to(dtype), 1.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(lin.weight.grad).all()


def test_bad_inputs_name_the_argument():
    logits, labels, ious = _batch()
    with pytest.raises(ValueError, match="ious"):
        hcrac_loss(logits, labels, ious[:5])
    with pytest.raises(ValueError, match="logits"):
        hcrac_loss(logits.flatten(), labels, ious)
    with pytest.raises(ValueError, match="labels"):
        hcrac_loss(logits, labels.bool(), ious)
    with pytest.raises(ValueError, match="labels must be in"):
        hcrac_loss(logits, labels - 1, ious)
    with pytest.raises(ValueError, match="theta"):
        hcrac_loss(logits, labels, ious, theta=1.0)
    with pytest.raises(ValueError, match="mu"):
        HCRACLoss(mu=0.0)
    with pytest.raises(ValueError, match="m_rci"):
        HCRACLoss(m_rci=0.0)


def test_registry_builds_it_with_switches():
    crit = build_cls_loss("hcrac", use_omega=False, use_rci=False, mu=3.0)
    assert isinstance(crit, HCRACLoss) and not crit.use_omega and crit.mu == 3.0


def test_criterion_asks_the_detector_for_negative_ious():
    # without this flag the detector passes u = 0 for negatives and ω's θ-branch never acts
    from hcral.losses import build_cls_loss

    assert build_cls_loss("hcrac").needs_negative_ious is True
    assert not getattr(build_cls_loss("focal"), "needs_negative_ious", False)
