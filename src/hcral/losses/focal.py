"""Sigmoid focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", ICCV).

The RetinaNet/ATSS baseline classification loss. The pure function matches
``torchvision.ops.sigmoid_focal_loss`` in value and gradient, but stays finite where
torchvision does not: half precision inputs are computed in float32, and the
modulating factor ``(1 - p_t)^γ`` has a finite gradient at saturation for ``γ < 1``.
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

__all__ = ["FocalLoss", "sigmoid_focal_loss"]


def _check_focal_params(alpha: float | None, gamma: float) -> None:
    if alpha is not None and alpha > 1:
        raise ValueError(f"alpha must be in [0, 1] (or < 0 / None to disable), got {alpha}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Binary focal loss ``-α_t (1 - p_t)^γ log(p_t)`` per element.

    Args:
        inputs: ``(*)`` logits, e.g. ``(P, C)``.
        targets: ``(*)`` float targets in [0, 1] (one-hot for detection), same shape.
        alpha: weight of the positive term (``1 - alpha`` for negatives); ``None`` or a
            negative value (torchvision's ``-1``) disables it.
        gamma: focusing exponent, ≥ 0; 0 gives plain binary cross-entropy.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; the mean of zero elements is 0.
    Returns:
        ``(*)`` for ``"none"``, else a scalar; float32 for half precision inputs.
    """
    check_pair(inputs, targets, ("inputs", "targets"))
    check_reduction(reduction)
    _check_focal_params(alpha, gamma)
    x, t = to_float(inputs), to_float(targets).to(to_float(inputs).dtype)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = x.sigmoid()
    # 1 - p_t = p (1 - t) + (1 - p) t, folded to save passes over the (P, C) tensor.
    loss = ce * safe_pow(p + t * (1 - 2 * p), gamma)
    if alpha is not None and alpha >= 0:
        loss = loss * ((1 - alpha) + (2 * alpha - 1) * t)  # α t + (1 - α)(1 - t)
    return reduce_loss(loss, reduction)


class FocalLoss(nn.Module):
    """Focal loss criterion: one-hot targets from labels, ``sum / avg_factor``.

    Args:
        alpha: positive/negative balance (0.25 in RetinaNet).
        gamma: focusing exponent (2.0 in RetinaNet).
        loss_weight: multiplier of the returned loss.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, loss_weight: float = 1.0):
        super().__init__()
        _check_focal_params(alpha, gamma)
        self.alpha, self.gamma, self.loss_weight = alpha, gamma, loss_weight

    def forward(
        self, logits: Tensor, labels: Tensor, ious: Tensor, avg_factor: float | Tensor
    ) -> Tensor:
        """Loss of ``(P, C)`` logits against labels ``(P,)`` in ``0..C``; ``ious`` unused.

        Returns:
            scalar: ``loss_weight * Σ focal / avg_factor``.
        """
        check_cls_call(logits, labels, ious, avg_factor)
        targets = one_hot_targets(labels, logits.shape[1])
        loss = sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="none")
        return normalise(loss, None, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, loss_weight={self.loss_weight}"
