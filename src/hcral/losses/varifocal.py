"""Varifocal loss (Zhang et al. 2021, "VarifocalNet: An IoU-aware Dense Object
Detector", CVPR).

VFL treats positives and negatives asymmetrically: negatives are down-weighted by
``α p^γ`` as in focal loss, positives are not down-weighted but scaled by their target
IoU ``q`` so that high-quality positives dominate training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcral.losses._reduce import (
    check_cls_call,
    check_pair,
    check_reduction,
    normalise,
    one_hot_targets,
    reduce_loss,
    safe_pow,
    to_float,
)

__all__ = ["VarifocalLoss", "varifocal_loss"]


def _check_params(alpha: float, gamma: float) -> None:
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def varifocal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    reduction: str = "none",
) -> Tensor:
    """``VFL(p, q) = -q (q log p + (1 - q) log(1 - p))`` if ``q > 0``, else ``-α p^γ log(1 - p)``.

    Entries with target ``q = 0`` count as negatives, as in the paper (so a positive
    whose box has IoU 0 is trained towards score 0). The weights are not detached,
    matching the paper and mmdet's reference.

    Args:
        inputs: ``(*)`` logits, e.g. ``(P, C)``.
        targets: ``(*)`` IoU-aware targets ``q`` in [0, 1], same shape.
        alpha: weight of the negative term (0.75).
        gamma: focusing exponent of the negative term (2).
        iou_weighted: scale positives by ``q``; when False positives get weight 1.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Returns:
        ``(*)`` for ``"none"``, else a scalar; float32 for half precision inputs.
    """
    check_pair(inputs, targets, ("inputs", "targets"))
    check_reduction(reduction)
    _check_params(alpha, gamma)
    x = to_float(inputs)
    q = to_float(targets).to(x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, q, reduction="none")
    pos_weight = q if iou_weighted else torch.ones_like(q)
    neg_weight = alpha * safe_pow((x.sigmoid() - q).abs(), gamma)
    return reduce_loss(ce * torch.where(q > 0, pos_weight, neg_weight), reduction)


class VarifocalLoss(nn.Module):
    """VFL criterion: target ``q`` = IoU at each positive's class entry; ``sum / avg_factor``.

    Args:
        alpha: weight of the negative term.
        gamma: focusing exponent of the negative term.
        iou_weighted: scale positives by their IoU target.
        loss_weight: multiplier of the returned loss.
    """

    def __init__(
        self,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        _check_params(alpha, gamma)
        self.alpha, self.gamma, self.iou_weighted = alpha, gamma, iou_weighted
        self.loss_weight = loss_weight

    def forward(
        self, logits: Tensor, labels: Tensor, ious: Tensor, avg_factor: float | Tensor
    ) -> Tensor:
        """Loss of ``(P, C)`` logits; ``ious`` ``(P,)`` (detached here) give the targets.

        Returns:
            scalar: ``loss_weight * Σ VFL / avg_factor``.
        """
        check_cls_call(logits, labels, ious, avg_factor)
        targets = one_hot_targets(labels, logits.shape[1], ious.detach().clamp(0, 1))
        loss = varifocal_loss(
            logits, targets, self.alpha, self.gamma, self.iou_weighted, reduction="none"
        )
        return normalise(loss, None, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"loss_weight={self.loss_weight}"
        )
