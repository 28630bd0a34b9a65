"""Dense detection head shared by all pyramid levels.

Two GroupNorm conv towers (classification, regression) feed a classifier, a box
regressor and optionally a quality branch (ATSS centerness / FCOS+ATSS IoU), with a
learnable scalar per level on the regression output (FCOS/ATSS).

Box outputs come in two codings:

* ``ltrb=False``: raw offsets (deltas) that the detector decodes against its anchors;
* ``ltrb=True``: distances from the point to the four box sides in units of the level
  stride, ``exp(scale_l · x)``. The regressor's bias starts at ``log(anchor_scale / 2)``
  so that the initial prediction is the ATSS anchor square (``anchor_scale × stride``),
  the box the assigner matched the point with. The exponent is computed in float32 and
  clamped so that AMP and early divergence cannot produce inf.

Two VFNet modules (Zhang et al. 2021, "VarifocalNet"), ``ltrb`` heads only:

* ``star_dcn``: after the initial box is predicted, classification (and refinement)
  features are re-sampled by a 3×3 deformable conv whose nine sampling points are the
  "star" of the initial box: its four corners, the midpoints of its four sides and the
  point itself. The initial box reaches the offsets with its gradient scaled by
  ``gradient_mul`` (0.1, as VFNet), so the classifier barely pushes the box around.
* ``bbox_refine``: a second regressor predicts per-side factors ``exp(scale'_l · Δ)``
  applied to the detached initial distances: ``refined = initial.detach() · exp(Δ)``
  (VFNet's form). The initial box keeps its own loss; the refined box is the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hcral.models.deform import DeformConv2d

# Largest exponent of an ltrb distance, in strides: e^10 ≈ 22000 strides, far past any image.
LTRB_EXP_CLAMP = 10.0
# deform_conv2d sampling grid of a 3×3 kernel, row-major, as (dy, dx).
_KERNEL_YX = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@dataclass
class HeadOutputs:
    """Per-level raw head outputs, ``L`` tensors each.

    Attributes:
        cls_logits: ``(N, A·C, H, W)``.
        box_reg: ``(N, A·4, H, W)`` deltas, or (``ltrb`` heads) distances in strides;
            the refined distances when ``bbox_refine`` is on.
        quality: ``(N, A, H, W)`` quality logits, or ``None``.
        box_reg_init: ``(N, 4, H, W)`` initial distances before refinement, or ``None``.
    """

    cls_logits: list[Tensor]
    box_reg: list[Tensor]
    quality: list[Tensor] | None = None
    box_reg_init: list[Tensor] | None = None


class Scale(nn.Module):
    """A learnable scalar multiplier (FCOS), one per pyramid level."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _norm_groups(channels: int) -> int:
    """32 groups as in the papers (8 channels each at width 256); narrower heads keep
    ≥ 8 channels per group, so a single image's 1×1 P7 still normalises over several
    values instead of one (which GroupNorm rejects in training)."""
    groups = min(32, max(channels // 8, 1))
    while channels % groups:
        groups -= 1
    return groups


def conv_gn_relu(channels: int) -> nn.Sequential:
    """3×3 conv (no bias, GroupNorm follows) + GroupNorm + ReLU, channels preserved."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.GroupNorm(_norm_groups(channels), channels),
        nn.ReLU(inplace=True),
    )


def star_offsets(ltrb: Tensor) -> Tensor:
    """Offsets that move a 3×3 kernel onto the star points of a box.

    Args:
        ltrb: ``(N, 4, H, W)`` distances from each cell to the box sides, in cells.
    Returns:
        ``(N, 18, H, W)`` offsets in ``deform_conv2d`` layout: ``(dy, dx)`` per kernel
        point, row-major, relative to the regular 3×3 grid.
    """
    l, t, r, b = ltrb.unbind(1)
    zero = torch.zeros_like(l)
    rows = {-1: -t, 0: zero, 1: b}
    cols = {-1: -l, 0: zero, 1: r}
    parts = []
    for ky, kx in _KERNEL_YX:
        parts += [rows[ky] - ky, cols[kx] - kx]
    return torch.stack(parts, dim=1)


class DenseHead(nn.Module):
    """Classification / box / quality head run on every pyramid level.

    Args:
        in_channels: FPN channels.
        num_classes: ``C``.
        num_anchors: ``A`` priors per location.
        num_levels: ``L`` (one :class:`Scale` each).
        num_convs: convs per tower.
        with_quality: add a quality (centerness / IoU) branch on the regression tower.
        ltrb: predict positive distances in strides (see module docstring).
        anchor_scale: initial box side in strides for ``ltrb`` heads.
        star_dcn, bbox_refine: VFNet modules (``ltrb`` heads only).
        prior_prob: initial foreground probability of the classifier (RetinaNet: 0.01).
        gradient_mul: gradient scale from the star offsets into the initial box.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int = 1,
        num_levels: int = 5,
        num_convs: int = 4,
        with_quality: bool = False,
        ltrb: bool = False,
        anchor_scale: float = 8.0,
        star_dcn: bool = False,
        bbox_refine: bool = False,
        prior_prob: float = 0.01,
        gradient_mul: float = 0.1,
    ):
        super().__init__()
        if (star_dcn or bbox_refine) and not (ltrb and num_anchors == 1):
            raise ValueError("star_dcn / bbox_refine need a one-prior ltrb head (fcos_atss)")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        self.num_classes, self.num_anchors, self.ltrb = num_classes, num_anchors, ltrb
        self.star_dcn, self.bbox_refine, self.gradient_mul = star_dcn, bbox_refine, gradient_mul
        ch = in_channels
        self.cls_tower = nn.Sequential(*[conv_gn_relu(ch) for _ in range(num_convs)])
        self.reg_tower = nn.Sequential(*[conv_gn_relu(ch) for _ in range(num_convs)])
        self.cls_logits = nn.Conv2d(ch, num_anchors * num_classes, 3, padding=1)
        self.box_reg = nn.Conv2d(ch, num_anchors * 4, 3, padding=1)
        self.quality = nn.Conv2d(ch, num_anchors, 3, padding=1) if with_quality else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        aux = star_dcn or bbox_refine
        # VFNet predicts the initial box from one more conv on the regression tower.
        self.reg_init = conv_gn_relu(ch) if aux else nn.Identity()
        self.cls_dcn = DeformConv2d(ch, ch, 3, padding=1, bias=False) if star_dcn else None
        if bbox_refine:
            self.refine_conv = (
                DeformConv2d(ch, ch, 3, padding=1, bias=False)
                if star_dcn
                else nn.Conv2d(ch, ch, 3, padding=1, bias=False)
            )
            self.refine_pred = nn.Conv2d(ch, 4, 3, padding=1)
            self.refine_scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self._init_weights(prior_prob, anchor_scale)

    def _init_weights(self, prior_prob: float, anchor_scale: float) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Focal-loss init: every prior starts as background with probability 1 - prior_prob.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        if self.ltrb:
            nn.init.constant_(self.box_reg.bias, math.log(anchor_scale / 2))

    def forward(self, features: list[Tensor]) -> HeadOutputs:
        """``L`` maps ``(N, in_channels, H_l, W_l)`` -> :class:`HeadOutputs`."""
        if len(features) != len(self.scales):
            raise ValueError(f"head expects {len(self.scales)} levels, got {len(features)}")
        outs = [self._level(x, i) for i, x in enumerate(features)]
        cls, reg, quality, init = (list(t) for t in zip(*outs))
        return HeadOutputs(
            cls,
            reg,
            quality if self.quality is not None else None,
            init if self.bbox_refine else None,
        )

    def _level(self, x: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        cls_feat, reg_feat = self.cls_tower(x), self.reg_tower(x)
        quality = self.quality(reg_feat) if self.quality is not None else None
        reg = self.scales[level](self.box_reg(self.reg_init(reg_feat)))
        if not self.ltrb:
            return self.cls_logits(cls_feat), reg, quality, None
        ltrb = reg.float().clamp(max=LTRB_EXP_CLAMP).exp()  # (N, 4, H, W) in strides
        offsets = None
        if self.star_dcn:
            g = self.gradient_mul
            offsets = star_offsets((1 - g) * ltrb.detach() + g * ltrb).to(cls_feat.dtype)
            cls_feat = torch.relu(self.cls_dcn(cls_feat, offsets))
        if not self.bbox_refine:
            return self.cls_logits(cls_feat), ltrb, quality, None
        if offsets is not None:
            refine_feat = torch.relu(self.refine_conv(reg_feat, offsets))
        else:
            refine_feat = torch.relu(self.refine_conv(reg_feat))
        delta = self.refine_scales[level](self.refine_pred(refine_feat)).float()
        refined = ltrb.detach() * delta.clamp(max=LTRB_EXP_CLAMP).exp()
        return self.cls_logits(cls_feat), refined, quality, ltrb
