"""HCRAR, the hybrid classification-regression adaptive regression loss (SPEC §3).

A GIoU loss per positive, reweighted by two detached factors:

* the conditioning factor (paper Eq. 7) ``CF_reg = exp(ρ_c² / c²) · F(u)``: the
  Wise-IoU-like centre term and the focusing curve ``F(u) = 1 + (δ - 1) φ(u)``,
  ``φ(u) = u (1 - u)^γ / (u* (1 - u*)^γ)``, ``u* = 1 / (1 + γ)``, which peaks at δ for
  ordinary-quality boxes (u = u*) and is 1 at u = 0 and u = 1;
* the RCI coefficient (Eqs. 8–9) ``r = (s - α + ep) / (u + ep)``, normalised by r̄, an
  EMA of its batch mean: > 1 (more regression gradient) for a well-scored poor box.

``L = Σ_i r̃_i · CF_i · (1 - GIoU_i) / N_pos`` (Eq. 10).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hcral.boxes import (
    aligned_giou,
    aligned_iou_and_centre_ratio,
    centre_distance_sq,
    enclosing_diag_sq,
)
from hcral.losses._reduce import check_reduction, check_reg_call, reduce_loss, to_float
from hcral.losses._state import RunningStat

__all__ = [
    "HCRARLoss",
    "centre_factor",
    "focusing_factor",
    "hcrar_loss",
    "hcrar_weight",
    "iou_and_centre_ratio",
    "rci_coefficient",
]


def focusing_factor(ious: Tensor, gamma: float = 1.2, delta: float = 1.5) -> Tensor:
    """``F(u) = 1 + (δ - 1) · φ(u)`` (Eq. 7), ``(P,)`` -> ``(P,)`` in [1, δ] for δ ≥ 1.

    ``φ(u) = u (1 - u)^γ / (u* (1 - u*)^γ)`` with ``u* = 1 / (1 + γ)`` is 1 at ``u*``
    and 0 at u = 0 and u = 1; u is clamped to [0, 1].
    """
    u = to_float(ious.detach()).clamp(0, 1)
    u_star = 1.0 / (1.0 + gamma)
    phi = u * (1 - u) ** gamma / (u_star * (1 - u_star) ** gamma)
    return 1 + (delta - 1) * phi


def centre_factor(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """``exp(ρ_c² / c²)`` (Eq. 7), ``(P, 4), (P, 4) -> (P,)`` in [1, e], detached.

    ρ_c is the distance between the box centres and c the diagonal of their smallest
    enclosing box.
    """
    with torch.no_grad():
        pred = pred_boxes.detach()
        return torch.exp(
            centre_distance_sq(pred, target_boxes) / enclosing_diag_sq(pred, target_boxes)
        )


@torch.no_grad()
def iou_and_centre_ratio(pred_boxes: Tensor, target_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and ``ρ_c² / c²`` of the detached boxes, for the weights only.

    ``boxes.aligned_iou_and_centre_ratio`` prepares the boxes once for both (inverted
    boxes collapse to their centre; areas and c² clamped at ``boxes.EPS``).

    Args:
        pred_boxes, target_boxes: ``(P, 4)`` xyxy.
    Returns:
        ``(P,)`` IoU in [0, 1] and ``(P,)`` ratio in [0, 1], float32 for half inputs.
    """
    return aligned_iou_and_centre_ratio(pred_boxes.detach(), target_boxes.detach())


def rci_coefficient(
    scores: Tensor, ious: Tensor, alpha: float = -0.1, ep: float = 1e-3, r_max: float | None = None
) -> Tensor:
    """``r = (s - α + ep) / (u + ep)`` (Eq. 8), optionally clamped at ``r_max``, ``(P,)``.

    r > 1 exactly when ``Δ = s - u - α > 0`` (region 1, SPEC §1); r ≤ (1 - α + ep) / ep.
    """
    s = to_float(scores.detach())
    r = (s - alpha + ep) / (to_float(ious.detach()).clamp(0, 1) + ep)
    return r.clamp(max=r_max) if r_max is not None else r


def _check_hcrar_params(alpha: float, ep: float, gamma: float, delta: float, r_max) -> None:
    if alpha > 0:
        raise ValueError(f"alpha must be <= 0 (SPEC §1), got {alpha}")
    if not ep > 0:
        raise ValueError(f"ep must be > 0, got {ep}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if r_max is not None and not r_max > 0:
        raise ValueError(f"r_max must be > 0 or None, got {r_max}")


def _check_scores(scores: Tensor, p: int) -> None:
    if not isinstance(scores, Tensor) or scores.shape != (p,) or not scores.is_floating_point():
        got = f"{tuple(scores.shape)} {scores.dtype}" if isinstance(scores, Tensor) else scores
        raise ValueError(f"scores must be a floating ({p},) tensor, got {got}")


@torch.no_grad()
def hcrar_weight(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    r: Tensor,
    ious: Tensor,
    *,
    r_mean: Tensor | float | None = None,
    gamma: float = 1.2,
    delta: float = 1.5,
    focusing: bool = True,
    centre: bool = True,
    centre_ratio: Tensor | None = None,
) -> Tensor:
    """Detached per-positive weight ``r̃ · CF_reg`` (Eqs. 7–9), ``(P,)``.

    Args:
        pred_boxes, target_boxes: ``(P, 4)`` xyxy.
        r: ``(P,)`` RCI coefficients (:func:`rci_coefficient`).
        ious: ``(P,)`` u_i = IoU(pred, target).
        r_mean: r̄; ``None`` uses the mean of ``r`` (1 when there is no positive).
        gamma, delta: γ, δ of F. focusing, centre: switch F / the centre term off.
        centre_ratio: ``(P,)`` precomputed ``ρ_c² / c²`` (:func:`iou_and_centre_ratio`);
            ``None`` computes it with :func:`centre_factor`.
    """
    if r_mean is None:
        r_mean = r.sum() / max(r.numel(), 1)
    r_mean = torch.as_tensor(r_mean, dtype=r.dtype, device=r.device)
    weight = r / r_mean.clamp(min=torch.finfo(r.dtype).tiny)
    if focusing:
        weight = weight * focusing_factor(ious, gamma, delta)
    if centre:
        weight = weight * (
            centre_factor(pred_boxes, target_boxes)
            if centre_ratio is None
            else torch.exp(centre_ratio)
        )
    return weight


def hcrar_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    scores: Tensor,
    *,
    r_mean: Tensor | float | None = None,
    alpha: float = -0.1,
    ep: float = 1e-3,
    gamma: float = 1.2,
    delta: float = 1.5,
    focusing: bool = True,
    centre: bool = True,
    r_max: float | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """HCRAR loss (SPEC §3, Eq. 10), stateless: ``r̃ · CF_reg · (1 - GIoU)`` per positive.

    Args:
        pred_boxes: ``(P, 4)`` decoded predicted boxes, xyxy (with grad).
        target_boxes: ``(P, 4)`` assigned ground truths, xyxy.
        scores: ``(P,)`` detached classification score s_i of the assigned class.
        r_mean: r̄ (EMA of the batch mean of r); ``None``: this batch's mean.
        alpha, ep: α (-0.1) and ep (1e-3) of Eq. 8. r_max: optional clamp of r.
        gamma, delta: γ (1.2) and δ (1.5) of F. focusing, centre: ablation switches.
        weight: ``(P,)`` optional extra per-positive weight.
        reduction: ``"mean"`` (over P), ``"sum"`` or ``"none"`` (``(P,)``).
    Returns:
        float32 scalar, or ``(P,)`` for ``"none"``.
    """
    check_reg_call(pred_boxes, target_boxes, weight, 1.0)
    _check_scores(scores, pred_boxes.shape[0])
    check_reduction(reduction)
    _check_hcrar_params(alpha, ep, gamma, delta, r_max)
    with torch.no_grad():
        ious, ratio = iou_and_centre_ratio(pred_boxes, target_boxes)
        r = rci_coefficient(scores, ious, alpha, ep, r_max)
        w = hcrar_weight(
            pred_boxes,
            target_boxes,
            r,
            ious,
            r_mean=r_mean,
            gamma=gamma,
            delta=delta,
            focusing=focusing,
            centre=centre,
            centre_ratio=ratio,
        )
    if weight is not None:
        w = w * to_float(weight)
    loss = (1 - aligned_giou(pred_boxes, target_boxes)) * w
    return reduce_loss(loss, reduction)


class HCRARLoss(nn.Module):
    """HCRAR criterion; r̄ is an EMA (momentum ``m_r``, weight of the new batch mean).

    ``forward(pred_boxes, target_boxes, *, scores, weight=None, pred_deltas=None,
    target_deltas=None, avg_factor=1.0)`` per docs/architecture.md; ``scores`` is
    required, the deltas are ignored, ``avg_factor`` is N_pos of Eq. 10.

    Args:
        alpha: α (-0.1). ep: ep (1e-3). gamma: γ (1.2). delta: δ (1.5).
        m_r: r̄ EMA momentum (0.01). r_max: optional clamp of r (None).
        focusing: use F(u) (paper: off with ATSS-style assignment).
        centre: use the centre term exp(ρ_c²/c²).
        loss_weight: multiplier (paper: 2.5 for RetinaNet, 1.5 with ATSS-style).
    """

    def __init__(
        self,
        alpha: float = -0.1,
        ep: float = 1e-3,
        gamma: float = 1.2,
        delta: float = 1.5,
        m_r: float = 0.01,
        r_max: float | None = None,
        focusing: bool = True,
        centre: bool = True,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        _check_hcrar_params(alpha, ep, gamma, delta, r_max)
        if not 0.0 < m_r <= 1.0:
            raise ValueError(f"m_r must be in (0, 1], got {m_r}")
        self.alpha, self.ep, self.gamma, self.delta = alpha, ep, gamma, delta
        self.m_r, self.r_max, self.focusing, self.centre = m_r, r_max, focusing, centre
        self.loss_weight = loss_weight
        self.r_mean = RunningStat(momentum=m_r, init=1.0)

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
        check_reg_call(pred_boxes, target_boxes, weight, avg_factor)
        if scores is None:
            raise ValueError("scores is required by HCRARLoss (the RCI coefficient uses them)")
        _check_scores(scores, pred_boxes.shape[0])
        with torch.no_grad():
            ious, ratio = iou_and_centre_ratio(pred_boxes, target_boxes)
            r = rci_coefficient(scores, ious, self.alpha, self.ep, self.r_max)
            r_mean = self.r_mean.update(r.sum(), r.numel())
            w = hcrar_weight(
                pred_boxes,
                target_boxes,
                r,
                ious,
                r_mean=r_mean,
                gamma=self.gamma,
                delta=self.delta,
                focusing=self.focusing,
                centre=self.centre,
                centre_ratio=ratio,
            )
            if weight is not None:
                w = w * to_float(weight)
            w = w * (self.loss_weight / avg_factor)
        # Σ w (1 - GIoU) as Σw - <w, GIoU>: two autograd nodes instead of five.
        giou = aligned_giou(pred_boxes, target_boxes)
        w = w.to(giou.dtype)
        return w.sum() - torch.dot(w, giou)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, ep={self.ep}, gamma={self.gamma}, delta={self.delta}, "
            f"m_r={self.m_r}, r_max={self.r_max}, focusing={self.focusing}, "
            f"centre={self.centre}, loss_weight={self.loss_weight}"
        )
