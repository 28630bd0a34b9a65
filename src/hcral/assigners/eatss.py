"""EATSS — expanded ATSS (SPEC §4, Algorithm 1 of the HCRAL paper).

1. ATSS (see atss.py) gives the positives of every GT.
2. ``d_max(g)``: the largest centre distance among ``g``'s ATSS positives (after
   ATSS's own conflict resolution); for a GT ATSS leaves empty, the largest among its
   top-k candidates whose centre is inside ``g``. A GT with neither stays unmatched.
3. Extra candidates of ``g``: priors positive for no GT, centre inside ``g`` (the
   ATSS ``INSIDE_EPS`` margin) and ``d ≤ d_max(g)`` from ``g``'s centre.
4. Rank them by ``IoU · (1 − d / (d_max + RANK_EPS))`` — IoU of the prior, or of the
   predicted box when ``pred_boxes`` is given — and keep the top ``num_extra``
   (higher score first, lower prior index on ties).

A prior picked as an extra by several GTs goes to one of them, by priority:
first a GT that ATSS left without positives, then the higher rank score, then the
lower GT index; the losing GTs do not pick again. The first rule serves SPEC P6
("every GT with a candidate centre inside it gets a positive"): a GT ATSS left empty
whose inside candidates are free (always so when it is alone) gets one even next to
a duplicate that has ATSS positives. P6 can still fail when two GTs ATSS left empty
compete for the same free priors (e.g. three identical boxes): the lower index wins.

Distances are compared squared (``d² ≤ d_max²``: no rounding of a square root decides
membership); the rank takes ``d = √d²``.

Cost: the extra candidates are gathered during the ATSS pass as sparse (GT, prior)
pairs within the fallback radius (an upper bound of ``d_max``) by one dense comparison
per GT chunk, so EATSS adds no second pass over the distances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hcral.assigners.atss import AtssState, atss_core, centre_inside, check_levels
from hcral.assigners.max_iou import AssignInputs, finalize, prepare_inputs
from hcral.assigners.result import AssignResult
from hcral.boxes import aligned_iou, box_centers

__all__ = ["RANK_EPS", "eatss_assign"]

# Only keeps the rank finite when d_max = 0 (a single candidate at the GT centre).
RANK_EPS = 1e-6


def top_per_group(group: Tensor, score: Tensor, index: Tensor, k: int) -> Tensor:
    """Mask of the ``k`` best entries of each group: higher score, then lower index.

    Args:
        group: ``(P,)`` int64 group ids, non-negative.
        score: ``(P,)`` float32, non-negative.
        index: ``(P,)`` int64 in ``[0, 2³²)``, the tie-breaker.
        k: entries kept per group, ``k ≥ 1``.
    Returns:
        ``(P,)`` bool.
    """
    if not group.numel():
        return torch.zeros_like(group, dtype=torch.bool)
    # Non-negative float32 bit patterns order like the floats (31 bits): one exact int64
    # key (group, score, -index) and a single sort when the three fit in 63 bits.
    bits = int(index.max()).bit_length()
    shift = 31 + bits
    if int(group.max()).bit_length() + shift <= 63:
        key = (group << shift) | (score.contiguous().view(torch.int32).to(torch.int64) << bits)
        key |= (1 << bits) - 1 - index
        order = torch.argsort(key, descending=True)
    else:
        key = (score.contiguous().view(torch.int32).to(torch.int64) << 32) | (0xFFFFFFFF - index)
        order = torch.argsort(key, descending=True)
        order = order[torch.argsort(group[order], stable=True)]
    # Sorted by group, an entry ranks < k in its group iff the entry k places earlier
    # belongs to another group.
    sorted_group = group[order]
    top = torch.ones_like(sorted_group, dtype=torch.bool)
    top[k:] = sorted_group[k:] != sorted_group[:-k]
    keep = torch.zeros_like(group, dtype=torch.bool)
    keep[order[top]] = True
    return keep


def _d_max(state: AtssState, m: int) -> tuple[Tensor, Tensor]:
    """``(N·M,)`` d_max² of SPEC §4 step 2 (``-inf``: no extras) and ``(N·M,)`` has-positive."""
    gid, flat, dist_sq = state.claims
    won = state.best_gt[flat] == gid % m  # claims that survived ATSS's conflict resolution
    d_max = torch.full_like(state.bound.flatten(), -math.inf)
    d_max.scatter_reduce_(0, gid, dist_sq.masked_fill(~won, -math.inf), "amax")
    has_pos = d_max > -math.inf
    return torch.where(has_pos, d_max, state.bound.flatten()), has_pos


def _extra_candidates(inputs: AssignInputs, state: AtssState) -> tuple[Tensor, ...]:
    """SPEC §4 step 3 on the collected pairs: ``(gid, flat, dist, d_max, has_pos)``.

    ``gid``, ``flat``, ``dist`` and ``d_max`` are ``(P,)`` per extra candidate (distances
    rooted); ``has_pos`` is ``(N·M,)``, whether ATSS gave the GT a positive.
    """
    n, m, r = inputs.shape
    gid, flat, dist_sq = state.pairs
    d_max_sq, has_pos = _d_max(state, m)
    centres = box_centers(inputs.priors)[flat % r]
    keep = (
        (state.best_gt[flat] < 0)
        & (dist_sq <= d_max_sq[gid])
        & centre_inside(centres, inputs.boxes.view(n * m, 4)[gid])
    )
    gid, flat = gid[keep], flat[keep]
    return gid, flat, dist_sq[keep].sqrt(), d_max_sq[gid].sqrt(), has_pos


def _extras(
    inputs: AssignInputs, state: AtssState, pred_boxes: Tensor | None, num_extra: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The extra positives: ``(E,)`` flat prior index ``n·R + r``, GT index and prior IoU."""
    n, m, r = inputs.shape
    gid, flat, dist, d_max, has_pos = _extra_candidates(inputs, state)
    gt_boxes = inputs.boxes.view(n * m, 4)[gid]
    prior_boxes = inputs.priors[flat % r]
    iou = aligned_iou(prior_boxes, gt_boxes)
    ranked = iou if pred_boxes is None else aligned_iou(pred_boxes.view(n * r, 4)[flat], gt_boxes)
    score = torch.nan_to_num(ranked, nan=0.0) * (1 - dist / (d_max + RANK_EPS))
    pick = top_per_group(gid, score, flat % r, num_extra)
    gid, score, flat, iou = gid[pick], score[pick], flat[pick], iou[pick]
    # One exact int64 key per claim: (GT without ATSS positives, score, -GT index).
    low = (1 << 31) - 1
    key = (~has_pos[gid]).to(torch.int64) << 62
    key |= score.view(torch.int32).to(torch.int64) << 31
    key |= low - gid % m
    best = torch.full((n * r,), -1, dtype=torch.int64, device=key.device)
    best.scatter_reduce_(0, flat, key, "amax")
    won = best[flat] == key
    return flat[won], gid[won] % m, iou[won]


@torch.no_grad()
def eatss_assign(
    priors: Tensor,
    num_level_priors: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    gt_crowd: Tensor | None,
    num_classes: int,
    topk: int = 9,
    num_extra: int = 3,
    pred_boxes: Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> AssignResult:
    """EATSS assignment of a batch (rules: module doc; crowd/degenerate GTs: max_iou.py).

    Args:
        priors: ``(R, 4)`` xyxy priors shared by the batch, level by level.
        num_level_priors: L ints, priors per level, summing to R.
        gt_boxes: ``(N, M, 4)`` xyxy, padded.
        gt_labels: ``(N, M)`` int64 classes ``0..C-1``.
        gt_mask: ``(N, M)`` bool, real (non-padding) GTs.
        gt_crowd: ``(N, M)`` bool crowd flags, or None for none.
        num_classes: C.
        topk: ATSS candidates per level.
        num_extra: ``l``, extra positives per GT at most; 0 gives ATSS exactly.
        pred_boxes: optional ``(N, R, 4)`` decoded predictions; when given, extras are
            ranked by the predicted boxes' IoU (``use_pred_boxes``).
        chunk_size: GTs per chunk; None keeps each ``(N, G, R)`` temporary ≤ 4M elements.
    Returns:
        :class:`AssignResult` with ``(N, R)`` tensors; ``max_ious`` is the prior's IoU.
    """
    inputs = prepare_inputs(priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes)
    n, m, r = inputs.shape
    check_levels(num_level_priors, r, topk)
    if num_extra < 0:
        raise ValueError(f"num_extra must be >= 0, got {num_extra}")
    if pred_boxes is not None and tuple(pred_boxes.shape) != (n, r, 4):
        raise ValueError(f"pred_boxes must have shape {(n, r, 4)}, got {tuple(pred_boxes.shape)}")
    extra = num_extra > 0 and m > 0 and r > 0
    state = atss_core(inputs, num_level_priors, topk, chunk_size, collect=extra)
    gt_inds, ious = state.best_gt, state.best_iou
    if extra:
        pred = None if pred_boxes is None else pred_boxes.detach().float()
        flat, extra_gt, extra_iou = _extras(inputs, state, pred, num_extra)
        gt_inds = gt_inds.index_put((flat,), extra_gt)
        ious = ious.index_put((flat,), extra_iou)
    return finalize(inputs, gt_inds.view(n, r), ious.view(n, r), num_classes, chunk_size=chunk_size)
