"""Quality Focal Loss (Li et al. 2020, "Generalized Focal Loss: Learning Qualified and
Distributed Bounding Boxes for Dense Object Detection", NeurIPS).

QFL trains the classification score to predict localisation quality: the target of a
positive's class entry is the IoU of its predicted box with the ground truth, every
other entry has target 0, and ``|y - σ|^β`` focuses on entries far from their target.
"""

from __future__ import annotations

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

__all__ = ["QualityFocalLoss", "quality_focal_loss"]


def _check_beta(beta: float) -> None:
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")


def quality_focal_loss(
    inputs: Tensor, targets: Tensor, beta: float = 2.0, reduction: str = "none"
) -> Tensor:
    """``QFL(σ) = -|y - σ|^β ((1 - y) log(1 - σ) + y log σ)`` per element.

    The modulating factor is not detached, as in the paper (and mmdet's reference).

    Args:
        inputs: ``(*)`` logits, e.g. ``(P, C)``.
        targets: ``(*)`` soft targets ``y`` in [0, 1], same shape.
        beta: focusing exponent β (2 in the paper).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Returns:
        ``(*)`` for ``"none"``, else a scalar; float32 for half precision inputs.
    """
    check_pair(inputs, targets, ("inputs", "targets"))
    check_reduction(reduction)
    _check_beta(beta)
    x = to_float(inputs)
    y = to_float(targets).to(x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    return reduce_loss(ce * safe_pow((y - x.sigmoid()).abs(), beta), reduction)


class QualityFocalLoss(nn.Module):
    """QFL criterion: soft target = IoU at each positive's class entry; ``sum / avg_factor``.

    Args:
        beta: focusing exponent β.
        loss_weight: multiplier of the returned loss.
    """

    def __init__(self, beta: float = 2.0, loss_weight: float = 1.0):
        super().__init__()
        _check_beta(beta)
        self.beta, self.loss_weight = beta, loss_weight

    def forward(
        self, logits: Tensor, labels: Tensor, ious: Tensor, avg_factor: float | Tensor
    ) -> Tensor:
        """Loss of ``(P, C)`` logits; ``ious`` ``(P,)`` (detached here) give soft targets.

        Returns:
            scalar: ``loss_weight * Σ QFL / avg_factor``.
        """
        check_cls_call(logits, labels, ious, avg_factor)
        # IoUs are in [0, 1] by construction; the clamp only guards rounding.
        targets = one_hot_targets(labels, logits.shape[1], ious.detach().clamp(0, 1))
        loss = quality_focal_loss(logits, targets, self.beta, reduction="none")
        return normalise(loss, None, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, loss_weight={self.loss_weight}"
