"""ATSS assignment (Zhang et al. 2020), vectorised over images and ground truths.

For every GT ``g`` (SPEC §4 step 1):

1. candidates: the ``topk`` (9) priors of each level nearest to ``g``'s centre
   (``min(topk, R_l)`` on a level with fewer priors). Distance ties go to the lower
   prior index, so the result is deterministic on every device;
2. ``t_g = mean + std`` of the candidates' IoUs with ``g``; like mmdet, ``std`` is the
   unbiased one (``n − 1``), taken as 0 when there is a single candidate. The
   statistics are computed in float64 so that they do not depend on summation order;
3. positives: candidates with ``IoU ≥ t_g`` whose centre lies inside ``g`` by more than
   ``INSIDE_EPS`` = 0.01 px on every side (mmdet's margin);
4. a prior claimed by several GTs goes to the one of highest IoU (lowest GT index on
   ties).

GTs are processed in chunks (``chunk_size``); the result does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hcral.assigners.max_iou import AssignInputs, finalize, gt_chunks, merge_claims, prepare_inputs
from hcral.assigners.result import AssignResult
from hcral.boxes import aligned_iou, box_centers

__all__ = ["INSIDE_EPS", "atss_assign", "centre_distance_sq", "centre_inside"]

INSIDE_EPS = 0.01


def centre_distance_sq(points: Tensor, centres: Tensor) -> Tensor:
    """Squared distance of broadcastable ``(..., 2)`` points, ``-> (...)`` px².

    Elementwise on purpose (``torch.cdist`` uses a matmul expansion whose rounding
    depends on the batch shape), so every code path gets bit-identical values. The
    assigners compare squared distances and take a square root only where a distance
    enters a formula, which saves a dense pass.
    """
    dx = points[..., 0] - centres[..., 0]
    dy = points[..., 1] - centres[..., 1]
    return dx.mul_(dx).add_(dy.mul_(dy))  # in place: two temporaries, not four


def centre_inside(points: Tensor, boxes: Tensor, eps: float = INSIDE_EPS) -> Tensor:
    """Whether ``(..., 2)`` points lie inside broadcastable ``(..., 4)`` boxes by > eps."""
    margin = torch.minimum(points - boxes[..., :2], boxes[..., 2:] - points)  # (..., 2)
    # minimum propagates NaN, which compares False, as each side alone would.
    return torch.minimum(margin[..., 0], margin[..., 1]) > eps


def check_levels(num_level_priors: Sequence[int], num_priors: int, topk: int) -> None:
    """Raise ValueError unless the level sizes sum to R and ``topk ≥ 1``."""
    if any(int(k) < 0 for k in num_level_priors) or sum(num_level_priors) != num_priors:
        raise ValueError(
            f"num_level_priors must be non-negative and sum to R={num_priors}, "
            f"got {list(num_level_priors)}"
        )
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")


def _stable_smallest(values: Tensor, k: int) -> Tensor:
    """Indices of the k smallest along the last axis, lower index first among equal values."""
    # For non-negative floats the int32 bit pattern is monotonic, so this int64 key
    # orders by (value, index) exactly.
    key = values.view(torch.int32).to(torch.int64) << 32
    key |= torch.arange(values.shape[-1], device=values.device)
    return key.topk(k, dim=-1, largest=False).indices


def sparse_nonzero(mask: Tensor) -> Tensor:
    """``(P,)`` int64 indices of the True entries of a sparse ``(K,)`` bool mask, ascending.

    Scans the mask eight bytes at a time (an int64 view) and tests single entries only
    in the non-zero words: a few times faster than ``nonzero`` when hits are rare.
    """
    n = mask.numel()
    n8 = n // 8 * 8
    words = mask[:n8].view(torch.int64)
    hit_words = (words != 0).nonzero().squeeze(1)
    eight = torch.arange(8, device=mask.device)
    tail = torch.arange(n8, n, device=mask.device)
    cand = torch.cat(((hit_words[:, None] * 8 + eight).view(-1), tail))
    return cand[mask[cand]]


def nearest_per_level(dist_sq: Tensor, num_level_priors: Sequence[int], topk: int) -> Tensor:
    """Indices of the ``topk`` nearest priors of every level; ties go to the lower index.

    Args:
        dist_sq: ``(N, G, R)`` non-negative finite squared centre distances.
        num_level_priors: L ints summing to R.
        topk: candidates per level.
    Returns:
        ``(N, G, K)`` int64 prior indices, ``K = Σ_l min(topk, R_l)``.
    """
    picks = []
    start = 0
    for size in num_level_priors:
        k = min(topk, size)
        level = dist_sq[..., start : start + size]
        if k == size:
            idx = torch.arange(size, device=dist_sq.device).expand(*level.shape[:-1], size)
        else:
            # The k smallest are unique unless the k-th value ties with the (k+1)-th; only
            # those rows pay for the exact (value, index) key.
            vals, idx = level.topk(k + 1, dim=-1, largest=False, sorted=True)
            idx = idx[..., :k].clone()
            tie = vals[..., k - 1] == vals[..., k]
            if tie.any():
                idx[tie] = _stable_smallest(level[tie], k)
        if size:
            picks.append(idx + start)
        start += size
    return torch.cat(picks, dim=-1)


def mean_plus_std(ious: Tensor) -> Tensor:
    """ATSS threshold ``mean + std`` (unbiased) over the last axis, float64 ``(..., 1)``."""
    x = ious.double()
    k = x.shape[-1]
    mean = x.sum(-1, keepdim=True) / k
    if k < 2:
        return mean
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / (k - 1)
    return mean + var.sqrt()


Pairs = tuple[Tensor, Tensor, Tensor]


@dataclass
class CandidateChunk:
    """The ATSS candidates of the GTs ``gts`` (a slice of the GT axis), ``(N, G, K)`` each.

    Attributes:
        flat: int64 flat prior index ``n·R + r``.
        iou: float32 IoU of the prior with the GT.
        dist_sq: float32 squared centre distance, px².
        inside: bool, centre inside the GT (and the GT active).
        gt: int64 GT index (an expanded view).
    """

    gts: slice
    flat: Tensor
    iou: Tensor
    dist_sq: Tensor
    inside: Tensor
    gt: Tensor


@dataclass
class AtssState:
    """ATSS result before labelling, plus what EATSS needs.

    Attributes:
        best_gt: ``(N·R,)`` int64 assigned GT or -1.
        best_iou: ``(N·R,)`` float IoU with it (``-inf`` where unassigned).
        bound: ``(N, M)`` largest squared centre distance among the GT's candidates
            whose centre is inside it (``-inf``: none) — the EATSS fallback ``d_max²``.
        centres: ``(R, 2)`` prior centres.
        gt_centres: ``(N, M, 2)`` GT centres.
        candidates: when collected, the ATSS candidates of every GT chunk.
        pairs: when collected, ``(gid, prior, flat)`` of the (GT, prior) pairs with the
            prior centre within ``bound`` of the GT centre; ``gid = n·M + g`` and
            ``flat = n·R + r``.
    """

    best_gt: Tensor
    best_iou: Tensor
    bound: Tensor
    centres: Tensor
    gt_centres: Tensor
    candidates: list[CandidateChunk] | None = None
    pairs: Pairs | None = None


def _cat(parts: list[Pairs], device: torch.device) -> Pairs:
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty, empty
    gid, prior, flat = zip(*parts)
    return torch.cat(gid), torch.cat(prior), torch.cat(flat)


def atss_core(
    inputs: AssignInputs,
    num_level_priors: Sequence[int],
    topk: int,
    chunk_size: int | None,
    collect: bool = False,
    dense_pairs: bool = True,
) -> AtssState:
    """Run ATSS over GT chunks; ``collect`` keeps the candidates EATSS needs and, with
    ``dense_pairs``, the pairs within the fallback radius (one dense test per chunk)."""
    n, m, r = inputs.shape
    dev = inputs.priors.device
    # The result buffers are normal tensors (callers may edit the returned gt_inds in
    # place); everything else is an inference tensor: inference mode skips the
    # view and version tracking that no_grad keeps, a quarter of the cost of the many
    # small kernels here (docs/bench_assigners.md).
    best_iou = torch.full((n * r,), -math.inf, device=dev)
    best_gt = torch.full((n * r,), -1, dtype=torch.int64, device=dev)
    with torch.inference_mode():
        return _atss_loop(
            inputs, num_level_priors, topk, chunk_size, collect, dense_pairs, best_iou, best_gt
        )


def _atss_loop(
    inputs: AssignInputs,
    num_level_priors: Sequence[int],
    topk: int,
    chunk_size: int | None,
    collect: bool,
    dense_pairs: bool,
    best_iou: Tensor,
    best_gt: Tensor,
) -> AtssState:
    """The body of :func:`atss_core`, filling ``best_iou`` and ``best_gt`` in place."""
    n, m, r = inputs.shape
    dev = inputs.priors.device
    centres = box_centers(inputs.priors)  # (R, 2)
    gt_centres = box_centers(inputs.boxes)  # (N, M, 2)
    bound = torch.full((n, m), -math.inf, device=dev)
    candidates: list[CandidateChunk] = []
    pairs: list[Pairs] = []
    img = torch.arange(n, device=dev)[:, None, None]
    for sl in gt_chunks(n, m, r, chunk_size) if r else ():
        boxes = inputs.boxes[:, sl, None, :]  # (N, G, 1, 4)
        dist_sq = centre_distance_sq(centres, gt_centres[:, sl, None, :])  # (N, G, R)
        cand = nearest_per_level(dist_sq, num_level_priors, topk)  # (N, G, K)
        iou = aligned_iou(inputs.priors[cand], boxes)  # (N, G, K)
        inside = centre_inside(centres[cand], boxes) & inputs.active[:, sl, None]
        pos = inside & (iou.double() >= mean_plus_std(iou))
        cand_dist = dist_sq.gather(-1, cand)
        bound[:, sl] = cand_dist.masked_fill(~inside, -math.inf).amax(-1)
        gt_idx = torch.arange(sl.start, sl.stop, device=dev)[None, :, None].expand_as(cand)
        flat = img * r + cand
        claim = iou.masked_fill(~pos, -math.inf)
        merge_claims(best_iou, best_gt, flat.flatten(), claim.flatten(), gt_idx.flatten())
        if collect:
            candidates.append(CandidateChunk(sl, flat, iou, cand_dist, inside, gt_idx))
        if collect and dense_pairs:
            # For priors that are no grid (grid.py searches windows instead).
            hit = sparse_nonzero((dist_sq <= bound[:, sl, None]).view(-1))
            row, prior = hit.div(r, rounding_mode="floor"), hit % r  # row = i·G + g
            i = row.div(sl.stop - sl.start, rounding_mode="floor")
            gid = row + i * (m - sl.stop + sl.start) + sl.start
            pairs.append((gid, prior, i * r + prior))
    state = AtssState(best_gt, best_iou, bound, centres, gt_centres)
    if collect:
        state.candidates = candidates
        state.pairs = _cat(pairs, dev) if dense_pairs else None
    return state


@torch.no_grad()
def atss_assign(
    priors: Tensor,
    num_level_priors: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    gt_crowd: Tensor | None,
    num_classes: int,
    topk: int = 9,
    *,
    chunk_size: int | None = None,
) -> AssignResult:
    """ATSS assignment of a batch (rules: module doc; crowd/degenerate GTs: max_iou.py).

    Args:
        priors: ``(R, 4)`` xyxy priors shared by the batch, level by level.
        num_level_priors: L ints, priors per level, summing to R.
        gt_boxes: ``(N, M, 4)`` xyxy, padded.
        gt_labels: ``(N, M)`` int64 classes ``0..C-1``.
        gt_mask: ``(N, M)`` bool, real (non-padding) GTs.
        gt_crowd: ``(N, M)`` bool crowd flags, or None for none.
        num_classes: C.
        topk: candidates per level.
        chunk_size: GTs per chunk; None keeps each ``(N, G, R)`` temporary ≤ 4M elements.
    Returns:
        :class:`AssignResult` with ``(N, R)`` tensors.
    """
    inputs = prepare_inputs(priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes)
    n, _, r = inputs.shape
    check_levels(num_level_priors, r, topk)
    state = atss_core(inputs, num_level_priors, topk, chunk_size)
    return finalize(
        inputs,
        state.best_gt.view(n, r),
        state.best_iou.view(n, r),
        num_classes,
        chunk_size=chunk_size,
    )
