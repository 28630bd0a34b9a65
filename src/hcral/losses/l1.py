"""L1 / smooth-L1 loss on encoded box offsets.

The RetinaNet baseline regression loss of the HCRAL paper's tables (RetinaNet: Lin et
al. 2017, as configured in mmdetection: L1 on ``(dx, dy, dw, dh)``); ``beta > 0`` gives
the smooth-L1 (Huber-like) loss of Girshick 2015, "Fast R-CNN", ICCV.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hcral.losses._reduce import (
    check_pair,
    check_reduction,
    check_reg_call,
    normalise,
    reduce_loss,
    to_float,
)

__all__ = ["L1Loss", "l1_loss"]


def _check_beta(beta: float) -> None:
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")


def l1_loss(pred: Tensor, target: Tensor, beta: float = 0.0, reduction: str = "none") -> Tensor:
    """Per-box L1 (or smooth-L1) distance, summed over the 4 offsets.

    ``smooth_l1(d) = 0.5 d² / beta`` for ``|d| < beta``, else ``|d| - 0.5 beta``;
    ``beta = 0`` is plain L1.

    Args:
        pred: ``(..., 4)`` predicted offsets.
        target: ``(..., 4)`` target offsets, same shape.
        beta: smooth-L1 transition point, ≥ 0.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (over boxes).
    Returns:
        ``(...)`` for ``"none"``, else a scalar; float32 for half precision inputs.
    """
    check_pair(pred, target, ("pred_deltas", "target_deltas"), last=4)
    check_reduction(reduction)
    _check_beta(beta)
    diff = (to_float(pred) - to_float(target)).abs()
    if beta > 0:
        diff = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return reduce_loss(diff.sum(-1), reduction)


class L1Loss(nn.Module):
    """L1 criterion on ``pred_deltas`` / ``target_deltas`` (boxes are ignored).

    Args:
        beta: smooth-L1 transition point (0 = plain L1, the RetinaNet baseline).
        loss_weight: multiplier of the returned loss.
    """

    def __init__(self, beta: float = 0.0, loss_weight: float = 1.0):
        super().__init__()
        _check_beta(beta)
        self.beta, self.loss_weight = beta, loss_weight

    def forward(
        self,
        pred_boxes: Tensor,
        target_boxes: Tensor,
        *,
        scores: Tensor | None = None,
        weight: Tensor | None = None,
        pred_deltas: Tensor | None = None,
        target_deltas: Tensor | None = None,
        avg_factor: float | Tensor = 1.0,
    ) -> Tensor:
        """``loss_weight * Σ weight · L1(pred_deltas, target_deltas) / avg_factor``.

        Args:
            pred_boxes, target_boxes: ``(P, 4)``, only checked for shape.
            scores: unused.
            weight: ``(P,)`` optional per-positive weight.
            pred_deltas, target_deltas: ``(P, 4)`` encoded offsets; required.
            avg_factor: number of positives averaged over ranks.
        Returns:
            scalar loss.
        """
        if pred_deltas is None or target_deltas is None:
            raise ValueError(
                "L1Loss regresses encoded offsets: pass pred_deltas and target_deltas "
                "(got None); use an IoU loss such as 'giou' to regress boxes directly"
            )
        check_reg_call(pred_boxes, target_boxes, weight, avg_factor)
        if pred_deltas.shape != pred_boxes.shape:
            raise ValueError(
                f"pred_deltas must have shape {tuple(pred_boxes.shape)}, "
                f"got {tuple(pred_deltas.shape)}"
            )
        loss = l1_loss(pred_deltas, target_deltas, self.beta)
        return normalise(loss, weight, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, loss_weight={self.loss_weight}"
