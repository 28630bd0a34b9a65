"""IoU-family box regression losses: GIoU, DIoU, CIoU, EIoU, Focal-EIoU, alpha-IoU, Wise-IoU.

Sources:
- GIoU: Rezatofighi et al. 2019, "Generalized Intersection over Union", CVPR.
- DIoU, CIoU: Zheng et al. 2020, "Distance-IoU Loss: Faster and Better Learning for
  Bounding Box Regression", AAAI.
- EIoU, Focal-EIoU: Zhang et al. 2022, "Focal and Efficient IOU Loss for Accurate
  Bounding Box Regression", Neurocomputing.
- alpha-IoU: He et al. 2021, "Alpha-IoU: A Family of Power Intersection over Union
  Losses for Bounding Box Regression", NeurIPS.
- Wise-IoU: Tong et al. 2023, "Wise-IoU: Bounding Box Regression Loss with Dynamic
  Focusing Mechanism", arXiv:2301.10051.

All box math comes from :mod:`hcral.boxes` (xyxy, degenerate boxes finite, half
precision computed in float32). Pure functions take ``(..., 4)`` boxes of one shape and
return the per-box loss ``(...)`` (or its reduction). Criteria take the positives'
``(P, 4)`` boxes and return ``loss_weight * Σ weight · loss / avg_factor``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hcral.boxes import (
    EPS,
    aligned_ciou,
    aligned_diou,
    aligned_eiou,
    aligned_giou,
    aligned_iou,
    centre_distance_sq,
    enclosing_diag_sq,
)
from hcral.losses._reduce import (
    check_pair,
    check_reduction,
    check_reg_call,
    normalise,
    reduce_loss,
    safe_pow,
    to_float,
)
from hcral.losses._state import RunningStat

__all__ = [
    "AlphaIoULoss",
    "CIoULoss",
    "DIoULoss",
    "EIoULoss",
    "FocalEIoULoss",
    "GIoULoss",
    "WiseIoULoss",
    "alpha_iou_loss",
    "ciou_loss",
    "diou_loss",
    "eiou_loss",
    "focal_eiou_loss",
    "giou_loss",
    "wise_iou_loss",
    "wise_iou_momentum",
]

ALPHA_IOU_PENALTIES = ("iou", "giou", "diou", "ciou")
WISE_IOU_VERSIONS = (1, 2, 3)


def _prepare(pred_boxes: Tensor, target_boxes: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    check_pair(pred_boxes, target_boxes, ("pred_boxes", "target_boxes"), last=4)
    check_reduction(reduction)
    # hcral.boxes collapses inverted boxes to their centre, so ρ²/c² stays bounded.
    return to_float(pred_boxes), to_float(target_boxes)


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor, reduction: str = "none") -> Tensor:
    """``1 - GIoU`` in [0, 2]; equals ``torchvision.ops.generalized_box_iou_loss``.

    Args:
        pred_boxes, target_boxes: ``(..., 4)`` xyxy.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Returns:
        ``(...)`` for ``"none"``, else a scalar.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    return reduce_loss(1 - aligned_giou(pred_boxes, target_boxes), reduction)


def diou_loss(pred_boxes: Tensor, target_boxes: Tensor, reduction: str = "none") -> Tensor:
    """``1 - IoU + ρ²/c²`` (ρ centre distance, c enclosing diagonal), in [0, 2].

    Args and Returns as :func:`giou_loss`.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    return reduce_loss(1 - aligned_diou(pred_boxes, target_boxes), reduction)


def ciou_loss(pred_boxes: Tensor, target_boxes: Tensor, reduction: str = "none") -> Tensor:
    """``1 - IoU + ρ²/c² + α v`` with the aspect term's α detached, as in the paper.

    Args and Returns as :func:`giou_loss`.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    return reduce_loss(1 - aligned_ciou(pred_boxes, target_boxes), reduction)


def eiou_loss(pred_boxes: Tensor, target_boxes: Tensor, reduction: str = "none") -> Tensor:
    """Efficient-IoU loss ``1 - IoU + ρ²/c² + (w - w*)²/Cw² + (h - h*)²/Ch²``.

    Args and Returns as :func:`giou_loss`.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    return reduce_loss(1 - aligned_eiou(pred_boxes, target_boxes), reduction)


def focal_eiou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    gamma: float = 0.5,
    detach_weight: bool = True,
    reduction: str = "none",
) -> Tensor:
    """Focal-EIoU ``IoU^γ · L_EIoU`` (γ = 0.5 in the paper).

    The paper writes the product without saying whether ``IoU^γ`` is differentiated.
    By default the factor is detached (a per-box weight, as in mmdet/ultralytics
    ports): differentiating it would push predictions towards *lower* IoU to shrink the
    weight, and ``d IoU^γ / d IoU`` is infinite at IoU = 0 for γ < 1. Note that a box
    with IoU 0 gets weight 0 and therefore no gradient, which is the paper's design.

    Args:
        pred_boxes, target_boxes: ``(..., 4)`` xyxy.
        gamma: exponent γ ≥ 0 of the IoU weight.
        detach_weight: detach ``IoU^γ`` (default) or let gradients flow through it.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Returns:
        ``(...)`` for ``"none"``, else a scalar.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    iou = aligned_iou(pred_boxes, target_boxes)
    weight = safe_pow(iou.detach() if detach_weight else iou, gamma)
    return reduce_loss(weight * (1 - aligned_eiou(pred_boxes, target_boxes)), reduction)


def _alpha_penalty(pred: Tensor, target: Tensor, iou: Tensor, penalty: str, alpha: float):
    """The power penalty term of alpha-IoU: ``(R)^α`` for each GIoU/DIoU/CIoU term."""
    if penalty == "iou":
        return torch.zeros_like(iou)
    if penalty == "giou":
        # |C \ (A ∪ B)| / |C| = IoU - GIoU
        return safe_pow((iou - aligned_giou(pred, target)).clamp(min=0), alpha)
    dist = centre_distance_sq(pred, target) / enclosing_diag_sq(pred, target)
    out = safe_pow(dist, alpha)  # ρ^{2α} / c^{2α}
    if penalty == "ciou":
        # β v = DIoU - CIoU (β detached inside aligned_ciou)
        out = out + safe_pow((aligned_diou(pred, target) - aligned_ciou(pred, target)), alpha)
    return out


def _check_alpha_iou(alpha: float, penalty: str) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if penalty not in ALPHA_IOU_PENALTIES:
        raise ValueError(f"penalty must be one of {ALPHA_IOU_PENALTIES}, got {penalty!r}")


def alpha_iou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    alpha: float = 3.0,
    penalty: str = "iou",
    reduction: str = "none",
) -> Tensor:
    """alpha-IoU ``1 - IoU^α + penalty^α`` (He et al. 2021; α = 3 recommended).

    ``penalty`` picks the family member: ``"iou"`` (none), ``"giou"``
    (``(|C \\ A∪B| / |C|)^α``), ``"diou"`` (``ρ^{2α}/c^{2α}``) or ``"ciou"``
    (``ρ^{2α}/c^{2α} + (βv)^α``). With α = 1 they reduce to the IoU/GIoU/DIoU/CIoU losses.

    Args:
        pred_boxes, target_boxes: ``(..., 4)`` xyxy.
        alpha: power α > 0.
        penalty: ``"iou"`` | ``"giou"`` | ``"diou"`` | ``"ciou"``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Returns:
        ``(...)`` for ``"none"``, else a scalar.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    _check_alpha_iou(alpha, penalty)
    iou = aligned_iou(pred_boxes, target_boxes)
    loss = 1 - safe_pow(iou, alpha) + _alpha_penalty(pred_boxes, target_boxes, iou, penalty, alpha)
    return reduce_loss(loss, reduction)


def wise_iou_momentum(num_iters: int) -> float:
    """The Wise-IoU paper's running-mean momentum ``1 - 0.05^(1/num_iters)``.

    Tong et al. choose the momentum so that after ``num_iters = t · n`` iterations
    (n per epoch, t the epoch at which mAP growth slows) the initial value keeps a
    weight of 5%. E.g. ``num_iters = 7000`` gives 4.3e-4.
    """
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    return 1.0 - 0.05 ** (1.0 / num_iters)


def _check_wise(version: int, gamma: float, alpha: float, delta: float) -> None:
    if version not in WISE_IOU_VERSIONS:
        raise ValueError(f"version must be one of {WISE_IOU_VERSIONS}, got {version!r}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not (alpha > 0 and delta > 0):
        raise ValueError(f"alpha and delta must be > 0, got alpha={alpha}, delta={delta}")


def wise_iou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    version: int = 3,
    iou_loss_mean: Tensor | float | None = None,
    gamma: float = 0.5,
    alpha: float = 1.9,
    delta: float = 3.0,
    reduction: str = "none",
) -> Tensor:
    """Wise-IoU v1/v2/v3 (Tong et al. 2023) on top of ``L_IoU = 1 - IoU``.

    - v1: ``R · L_IoU`` with ``R = exp(ρ² / c²*)``, c² (the enclosing diagonal) detached
      so the box is not rewarded for growing its enclosing box; ρ² keeps its gradient.
    - v2: ``(L_IoU* / mean)^γ · v1`` (monotonic focusing, γ = 0.5).
    - v3: ``β / (δ α^(β - δ)) · v1`` with outlier degree ``β = L_IoU* / mean``
      (non-monotonic focusing, α = 1.9, δ = 3: largest weight near β = 1/ln α ≈ 1.56).

    ``*`` marks detached values; ``mean`` is the running mean of ``L_IoU`` that
    :class:`WiseIoULoss` keeps.

    Args:
        pred_boxes, target_boxes: ``(..., 4)`` xyxy.
        version: 1, 2 or 3.
        iou_loss_mean: running mean of ``1 - IoU`` (scalar, treated as a constant);
            required for v2 and v3.
        gamma: v2 exponent.
        alpha, delta: v3 parameters.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    Returns:
        ``(...)`` for ``"none"``, else a scalar.
    """
    pred_boxes, target_boxes = _prepare(pred_boxes, target_boxes, reduction)
    _check_wise(version, gamma, alpha, delta)
    if version > 1 and iou_loss_mean is None:
        raise ValueError(f"iou_loss_mean is required for Wise-IoU v{version}")
    l_iou = 1 - aligned_iou(pred_boxes, target_boxes)
    dist = centre_distance_sq(pred_boxes, target_boxes)
    loss = torch.exp(dist / enclosing_diag_sq(pred_boxes, target_boxes).detach()) * l_iou
    if version == 1:
        return reduce_loss(loss, reduction)
    mean = torch.as_tensor(iou_loss_mean, dtype=l_iou.dtype, device=l_iou.device).detach()
    beta = l_iou.detach() / mean.clamp(min=EPS)
    if version == 2:
        focus = safe_pow(beta, gamma)
    else:
        # α^(β-δ) overflows to inf for huge β; β / inf = 0, which is the limit anyway.
        focus = beta / (delta * torch.pow(torch.full_like(beta, alpha), beta - delta))
    return reduce_loss(focus * loss, reduction)


class _IoUCriterion(nn.Module):
    """Shared regression call: ``loss_weight * Σ weight · loss(pred, target) / avg_factor``."""

    def __init__(self, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        raise NotImplementedError

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
        """Regression loss of the positives.

        Args:
            pred_boxes, target_boxes: ``(P, 4)`` xyxy (``pred_boxes`` has grad).
            scores, pred_deltas, target_deltas: unused (uniform criterion call).
            weight: ``(P,)`` optional per-positive weight.
            avg_factor: number of positives averaged over ranks.
        Returns:
            scalar loss.
        """
        check_reg_call(pred_boxes, target_boxes, weight, avg_factor)
        loss = self.per_box(pred_boxes, target_boxes)
        return normalise(loss, weight, avg_factor, self.loss_weight)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}"


class GIoULoss(_IoUCriterion):
    """GIoU criterion (:func:`giou_loss`)."""

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return giou_loss(pred_boxes, target_boxes)


class DIoULoss(_IoUCriterion):
    """DIoU criterion (:func:`diou_loss`)."""

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return diou_loss(pred_boxes, target_boxes)


class CIoULoss(_IoUCriterion):
    """CIoU criterion (:func:`ciou_loss`)."""

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return ciou_loss(pred_boxes, target_boxes)


class EIoULoss(_IoUCriterion):
    """EIoU criterion (:func:`eiou_loss`)."""

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return eiou_loss(pred_boxes, target_boxes)


class FocalEIoULoss(_IoUCriterion):
    """Focal-EIoU criterion (:func:`focal_eiou_loss`); normalised by ``avg_factor``."""

    def __init__(self, gamma: float = 0.5, detach_weight: bool = True, loss_weight: float = 1.0):
        super().__init__(loss_weight)
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.detach_weight = gamma, detach_weight

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return focal_eiou_loss(pred_boxes, target_boxes, self.gamma, self.detach_weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, detach_weight={self.detach_weight}, {super().extra_repr()}"


class AlphaIoULoss(_IoUCriterion):
    """alpha-IoU criterion (:func:`alpha_iou_loss`)."""

    def __init__(self, alpha: float = 3.0, penalty: str = "iou", loss_weight: float = 1.0):
        super().__init__(loss_weight)
        _check_alpha_iou(alpha, penalty)
        self.alpha, self.penalty = alpha, penalty

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return alpha_iou_loss(pred_boxes, target_boxes, self.alpha, self.penalty)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, penalty={self.penalty!r}, {super().extra_repr()}"


class WiseIoULoss(_IoUCriterion):
    """Wise-IoU criterion with the running mean of ``L_IoU`` in a :class:`RunningStat`.

    In training mode each call first folds the batch mean of ``1 - IoU`` (summed over
    ranks) into the running mean, then weights the batch with it, as the authors'
    reference code does; in eval mode the stored mean is used unchanged. The mean is in
    ``state_dict`` (``iou_loss_mean.value``) so a resumed run continues exactly.

    Deviations from the reference code, both deliberate: the running mean starts from
    the first batch's mean (the reference starts at 1 and blends, which makes early
    focusing depend on the momentum); and the default momentum is 0.01 (half-life ~70
    iterations) rather than the paper's ``1 - 0.05^(1/(t·n))`` (~1e-4 on COCO), which
    suits short schedules; pass ``momentum=wise_iou_momentum(t * n)`` for the paper's.

    Args:
        version: 1, 2 or 3.
        gamma: v2 exponent (0.5).
        alpha, delta: v3 parameters (1.9, 3).
        momentum: weight of the new batch in the running mean.
        loss_weight: multiplier of the returned loss.
    """

    def __init__(
        self,
        version: int = 3,
        gamma: float = 0.5,
        alpha: float = 1.9,
        delta: float = 3.0,
        momentum: float = 0.01,
        loss_weight: float = 1.0,
    ):
        super().__init__(loss_weight)
        _check_wise(version, gamma, alpha, delta)
        self.version, self.gamma, self.alpha, self.delta = version, gamma, alpha, delta
        # Kept for every version so checkpoints load across versions.
        self.iou_loss_mean = RunningStat(momentum=momentum, init=1.0)

    def per_box(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        with torch.no_grad():
            l_iou = 1 - aligned_iou(pred_boxes, target_boxes)
        mean = self.iou_loss_mean.update(l_iou.sum(), l_iou.numel())
        return wise_iou_loss(
            pred_boxes, target_boxes, self.version, mean, self.gamma, self.alpha, self.delta
        )

    def extra_repr(self) -> str:
        return (
            f"version={self.version}, gamma={self.gamma}, alpha={self.alpha}, "
            f"delta={self.delta}, {super().extra_repr()}"
        )
