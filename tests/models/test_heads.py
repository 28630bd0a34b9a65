"""Dense head: shapes, initialisation, star-shaped offsets, box refinement."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import deform_conv2d

from hcral.models.heads import DenseHead, star_offsets


def _features(device, n=2, ch=32, sizes=((8, 8), (4, 4), (2, 2))):
    return [torch.randn(n, ch, h, w, device=device) for h, w in sizes]


def test_output_shapes_and_prior_prob_init(device):
    head = DenseHead(32, num_classes=3, num_anchors=9, num_levels=3, num_convs=2).to(device)
    out = head(_features(device))
    assert [tuple(t.shape) for t in out.cls_logits] == [(2, 27, 8, 8), (2, 27, 4, 4), (2, 27, 2, 2)]
    assert [tuple(t.shape) for t in out.box_reg] == [(2, 36, 8, 8), (2, 36, 4, 4), (2, 36, 2, 2)]
    assert out.quality is None and out.box_reg_init is None
    # std-0.01 weights leave the logits near the prior-probability bias
    p = torch.cat([t.flatten() for t in out.cls_logits]).sigmoid()
    assert p.mean().item() == pytest.approx(0.01, rel=0.05)


def test_ltrb_head_starts_at_the_anchor_square(device):
    head = DenseHead(32, 3, num_levels=3, num_convs=1, with_quality=True, ltrb=True).to(device)
    out = head(_features(device))
    assert [tuple(q.shape) for q in out.quality] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    ltrb = torch.cat([t.flatten() for t in out.box_reg])
    assert ltrb.dtype == torch.float32 and (ltrb > 0).all()
    assert ltrb.mean().item() == pytest.approx(4.0, rel=0.05)  # anchor_scale 8 / 2 strides


def test_group_norm_falls_back_for_narrow_heads():
    def groups(ch):
        return DenseHead(ch, 2, num_levels=1, num_convs=1).cls_tower[0][1].num_groups

    assert [groups(ch) for ch in (256, 512, 64, 32, 24, 4)] == [32, 32, 8, 4, 3, 1]
    # batch 1 with a 1×1 level: GroupNorm needs more than one value per group
    head = DenseHead(32, 2, num_levels=1, num_convs=1).train()
    assert torch.isfinite(head([torch.randn(1, 32, 1, 1)]).cls_logits[0]).all()


def test_star_offsets_sample_the_box_star():
    # Integer distances make the bilinear sampling exact: kernel point k alone must read
    # the input at the k-th star point (corners, side midpoints, centre) of each cell's box.
    torch.manual_seed(0)
    h, w = 9, 11
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    l, t, r, b = 2, 1, 3, 2
    ltrb = torch.tensor([l, t, r, b], dtype=torch.float64).view(1, 4, 1, 1).expand(1, 4, h, w)
    offsets = star_offsets(ltrb)
    assert offsets.shape == (1, 18, h, w)
    star = [(dy, dx) for dy in (-t, 0, b) for dx in (-l, 0, r)]
    padded = torch.nn.functional.pad(x, (l, r, t, b))  # deform_conv2d reads zeros outside
    for k, (dy, dx) in enumerate(star):
        weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        weight.view(-1)[k] = 1.0
        out = deform_conv2d(x, offsets, weight, padding=(1, 1))
        expected = padded[..., t + dy : t + dy + h, l + dx : l + dx + w]
        torch.testing.assert_close(out, expected)


def test_star_dcn_lets_classification_reach_the_initial_box(device):
    head = DenseHead(32, 3, num_levels=3, num_convs=1, ltrb=True, star_dcn=True).to(device)
    out = head(_features(device))
    torch.cat([c.flatten() for c in out.cls_logits]).sum().backward()
    # through the offsets, scaled by gradient_mul, the classifier moves the box regressor
    assert head.box_reg.weight.grad is not None and head.box_reg.weight.grad.abs().sum() > 0


def test_bbox_refine_scales_the_detached_initial_box(device):
    head = DenseHead(32, 3, num_levels=3, num_convs=1, ltrb=True, bbox_refine=True).to(device)
    with torch.no_grad():
        head.refine_pred.bias.fill_(math.log(2.0))
        head.refine_pred.weight.zero_()
    out = head(_features(device))
    for init, refined in zip(out.box_reg_init, out.box_reg):
        torch.testing.assert_close(refined, 2.0 * init)
    torch.cat([t.flatten() for t in out.box_reg]).sum().backward()
    assert head.box_reg.weight.grad is None  # refined = initial.detach() · exp(Δ)
    assert head.refine_pred.bias.grad.abs().sum() > 0


def test_both_vfnet_modules_run_and_backprop(device):
    head = DenseHead(
        32,
        3,
        num_levels=3,
        num_convs=1,
        with_quality=True,
        ltrb=True,
        star_dcn=True,
        bbox_refine=True,
    ).to(device)
    out = head(_features(device))
    total = sum(t.sum() for t in out.cls_logits + out.box_reg + out.box_reg_init + out.quality)
    total.backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="star_dcn"):
        DenseHead(32, 3, num_anchors=9, star_dcn=True)
    with pytest.raises(ValueError, match="num_classes"):
        DenseHead(32, 0)
    with pytest.raises(ValueError, match="levels"):
        DenseHead(32, 3, num_levels=5)(_features(torch.device("cpu")))
