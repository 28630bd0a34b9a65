"""HCRAC's focal-base variant: ω·ρ on focal loss (docs/method.md §2, "focal base")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from hcral.losses import build_cls_loss
from hcral.losses.focal import FocalLoss
from hcral.losses.hcrac import HCRACLoss


def _batch(p=40, c=5, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(p, c, generator=g, dtype=dtype) * 2).to(device).requires_grad_()
    labels = torch.randint(0, c + 1, (p,), generator=g).to(device)
    ious = torch.rand(p, generator=g, dtype=dtype).to(device)
    return logits, labels, ious


def reference(logits, labels, ious, avg, mu=5.0, theta=0.7, rho_mean=None, eps=1e-3):
    """Entry by entry: torchvision focal times ω (Eq. 3) and ρ (Eq. 5), / avg."""
    p_, c = logits.shape
    y = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
    prob = logits.detach().sigmoid()
    w = torch.ones_like(prob)
    nums = {}
    for i in range(p_):
        u = float(ious[i])
        if labels[i] < c:
            w[i, labels[i]] = 1 + u
            nums[i] = math.exp(mu * max(u - float(prob[i, labels[i]]), 0.0)) - 1
        else:
            w[i] = 1 + u if u <= theta else (1 + theta) * (1 - u) / (1 - theta)
    if rho_mean is None:
        rho_mean = sum(nums.values()) / max(len(nums), 1)
    for i, num in nums.items():
        w[i, labels[i]] *= num / max(rho_mean, eps)
    return (w * tv_focal(logits, y, reduction="none")).sum() / avg


def test_without_omega_and_rho_it_is_focal_loss_in_value_and_gradient(device):
    logits, labels, ious = _batch(device=device)
    ours = HCRACLoss(base="focal", use_omega=False, use_rci=False)(logits, labels, ious, 7.0)
    (g_ours,) = torch.autograd.grad(ours, logits)
    focal = FocalLoss()(logits, labels, ious, 7.0)
    (g_focal,) = torch.autograd.grad(focal, logits)
    torch.testing.assert_close(ours, focal)
    torch.testing.assert_close(g_ours, g_focal)


def test_matches_the_entry_by_entry_reference(device):
    logits, labels, ious = _batch(device=device, dtype=torch.float64)
    crit = HCRACLoss(base="focal").to(device)
    got = crit(logits, labels, ious, 5.0)  # first batch: ρ̄ = this batch's mean
    torch.testing.assert_close(got.float(), reference(logits, labels, ious, 5.0).float())
    rho_bar = float(crit.rho_mean.value)
    logits2, labels2, ious2 = _batch(device=device, dtype=torch.float64, seed=1)
    got2 = crit(logits2, labels2, ious2, 5.0)  # later batches use the EMA
    assert float(crit.rho_mean.value) != rho_bar
    want2 = reference(logits2, labels2, ious2, 5.0, rho_mean=float(crit.rho_mean.value))
    torch.testing.assert_close(got2.float(), want2.float())


def _entry_weight(logits, labels, ious, crit):
    """The factor on each entry's focal gradient: d loss / d x over d focal / d x."""
    (g,) = torch.autograd.grad(crit(logits, labels, ious, 1.0), logits)
    off = HCRACLoss(base="focal", use_omega=False, use_rci=False)
    (g0,) = torch.autograd.grad(off(logits, labels, ious, 1.0), logits)
    return g / g0


def test_p1_p2_positive_weight_rises_with_iou_and_with_the_score_gap():
    # two positives, same score: the higher IoU gets more weight (P1, and P2's gap)
    logits = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    w = _entry_weight(
        logits, torch.tensor([0, 0]), torch.tensor([0.7, 0.9]).double(), HCRACLoss(base="focal")
    )
    assert w[1, 0] > w[0, 0] > 0
    # scored at or above its IoU: ρ = 0 (P2)
    logits = torch.tensor([[0.0], [3.0]], dtype=torch.float64, requires_grad=True)
    w = _entry_weight(
        logits, torch.tensor([0, 0]), torch.tensor([0.9, 0.5]).double(), HCRACLoss(base="focal")
    )
    assert w[0, 0] > 0 and w[1, 0] == 0


def test_p3_negative_weight_peaks_at_theta():
    u = torch.tensor([0.0, 0.3, 0.7, 0.85, 1.0], dtype=torch.float64)
    logits = torch.zeros(5, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.full((5,), 2)
    w = _entry_weight(logits, labels, u, HCRACLoss(base="focal", theta=0.7))
    expected = torch.tensor([1.0, 1.3, 1.7, 1.7 * 0.15 / 0.3, 0.0], dtype=torch.float64)
    torch.testing.assert_close(w[:, 0], expected)
    torch.testing.assert_close(w[:, 1], expected)


def test_empty_batch_and_config_building():
    crit = build_cls_loss("hcrac", base="focal", gamma=1.5)
    assert crit.base == "focal" and crit.gamma == 1.5
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = crit(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0), 1.0)
    loss.backward()
    assert loss.item() == 0 and logits.grad.shape == (0, 3)
    with pytest.raises(ValueError, match="base"):
        HCRACLoss(base="ghmc")
