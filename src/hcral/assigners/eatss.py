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

Outside SPEC, ``min_extra_iou`` > 0 gates step 3 by quality: a GT that has ATSS
positives only takes extra candidates whose prior IoU with it is at least that much
(a GT ATSS left empty takes any, so every P6 property still holds). On the sample
data the SPEC extras are mostly coarse-level priors of median IoU 0.08
(docs/results.md §7); the gate is the knob for that.

Distances are compared squared (``d² ≤ d_max²``: no rounding of a square root decides
membership); the rank takes ``d = √d²``.

Cost (docs/bench_assigners.md): when the priors form one grid per level, as the
detectors' do, the extra candidates come from a window search over the cells near each
GT (grid.py) and, from ``PRUNE_MIN_GTS`` GTs on, levels whose priors cannot reach a
GT's rank floor are skipped; otherwise one dense ``d² ≤ bound²`` test per GT chunk of
the ATSS pass gathers them. Both find the same candidates (``search="dense"`` forces
the dense test), so EATSS adds no second dense pass over the distances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hcral.assigners.atss import (
    INSIDE_EPS,
    AtssState,
    CandidateChunk,
    atss_core,
    check_levels,
)
from hcral.assigners.grid import (
    PriorGrid,
    clip_to_squares,
    prior_info,
    window_pairs,
)
from hcral.assigners.max_iou import AssignInputs, finalize, prepare_inputs
from hcral.assigners.result import AssignResult
from hcral.boxes import EPS, aligned_iou

__all__ = ["RANK_EPS", "eatss_assign"]

# Only keeps the rank finite when d_max = 0 (a single candidate at the GT centre).
RANK_EPS = 1e-6
# Skip pyramid levels by the rank floor from this many GTs in the batch on (grid.py).
PRUNE_MIN_GTS = 16


def top_per_group(group: Tensor, score: Tensor, k: int, keep: Tensor | None = None) -> Tensor:
    """Indices of the ``k`` best entries of each group: higher score, then earlier entry.

    Args:
        group: ``(P,)`` int64 group ids in ``[0, 2³¹)``.
        score: ``(P,)`` float32, non-negative where kept.
        k: entries kept per group, ``k ≥ 1``.
        keep: optional ``(P,)`` bool, the entries that take part (default: all).
    Returns:
        ``(K,)`` int64 positions into the inputs, grouped (descending group id).

    EATSS's pairs list each GT's priors in ascending index order (window and dense
    search alike), so "earlier entry" is SPEC's "lower prior index" on ties.
    """
    if not group.numel():
        return group.new_zeros(0)
    # Non-negative float32 bit patterns order like the floats (31 bits): one exact int64
    # key (group, score), -1 for the entries left out; the stable sort keeps equal keys
    # in input order.
    key = (group << 32) | score.contiguous().view(torch.int32).to(torch.int64)
    if keep is not None:
        key = torch.where(keep, key, -1)
    sorted_key, order = key.sort(descending=True, stable=True)
    sorted_group = sorted_key >> 32  # -1 for the left-out, last
    # Sorted by group, an entry ranks < k in its group iff the entry k places earlier
    # belongs to another group.
    top = torch.ones_like(sorted_group, dtype=torch.bool)
    top[k:] = sorted_group[k:] != sorted_group[:-k]
    if keep is not None:
        top &= sorted_group >= 0
    return order.index_select(0, top.nonzero().squeeze(1))


def _rank_score(iou: Tensor, dist: Tensor, d_max: Tensor) -> Tensor:
    """SPEC §4 step 4 rank ``IoU · (1 − d / (d_max + ε))``; one expression for all callers."""
    return iou * (1 - dist / (d_max + RANK_EPS))


def _d_max(
    state: AtssState, m: int, num_extra: int, floor: bool, min_iou: float
) -> tuple[Tensor, ...]:
    """``(N·M,)`` each: d_max² of SPEC §4 step 2 (``-inf``: no extras), has-positive, and
    — with ``floor`` — the rank floor (``-inf``: none; None when not asked).

    The floor of a GT is the ``num_extra``-th best rank score among its ATSS candidates
    that are extra candidates too (free, inside, within d_max, IoU ≥ ``min_iou`` when the
    GT has ATSS positives): its final extras score at least that much, so no prior
    scoring less can be picked.
    """
    won_parts, floor_parts = [], []
    for c in state.candidates:  # GT chunks, in order
        owner = state.best_gt.index_select(0, c.flat.view(-1)).view_as(c.flat)
        # Claims that survived ATSS's conflict resolution (a won prior was a claim).
        won = c.dist_sq.masked_fill(owner != c.gt, -math.inf).amax(-1)  # (N, G)
        won_parts.append(won)
        if floor:
            floor_parts.append(_chunk_floor(state, c, owner, won, num_extra, min_iou))
    pos_dist = _cat_gts(won_parts)
    has_pos = pos_dist > -math.inf
    rank_floor = _cat_gts(floor_parts) if floor else None
    return torch.where(has_pos, pos_dist, state.bound.view(-1)), has_pos, rank_floor


def _cat_gts(parts: list[Tensor]) -> Tensor:
    """``(N, G)`` chunk parts -> ``(N·M,)``, image-major."""
    return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).reshape(-1)


def _chunk_floor(
    state: AtssState, c: CandidateChunk, owner: Tensor, won: Tensor, num_extra: int,
    min_iou: float,
) -> Tensor:  # fmt: skip
    """``(N, G)`` rank floor of a GT chunk (:func:`_d_max`), ``-inf`` where none."""
    if c.iou.shape[-1] < num_extra:
        return torch.full_like(won, -math.inf)
    d_max_sq = torch.where(won > -math.inf, won, state.bound[:, c.gts])[..., None]
    free = (owner < 0) & c.inside & (c.dist_sq <= d_max_sq)
    if min_iou > 0:
        free &= (c.iou >= min_iou) | (won == -math.inf)[..., None]
    score = _rank_score(c.iou, c.dist_sq.sqrt(), d_max_sq.clamp(min=0).sqrt())
    return score.masked_fill(~free, -math.inf).topk(num_extra, dim=-1).values[..., -1]


def _pairs(
    inputs: AssignInputs,
    state: AtssState,
    grid: PriorGrid | None,
    table: Tensor,
    rank_floor: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A superset of the step-3 pairs that can still be picked, ``(P,)`` each: ``(gid,
    prior, flat)``, each GT's priors ascending; from the dense test of the ATSS pass, or
    from the grid windows of the GT boxes clipped to their d_max squares (skipping levels
    whose IoU bound is under the rank floor)."""
    n, m, r = inputs.shape
    if grid is None:
        return state.pairs
    bounds = clip_to_squares(table[:, :4], table[:, 4:8], table[:, 9:10])  # window_bounds
    boxes = inputs.boxes.view(n * m, 4)
    return window_pairs(grid, bounds, m, r, boxes, rank_floor)


def _gt_table(inputs: AssignInputs, state: AtssState, d_max_sq: Tensor) -> Tensor:
    """``(N·M, 11)`` per GT: :func:`grid.lower_negated` box and centre, d_max², d_max, area.

    No candidate (``d_max² = -inf``) gives d_max 0: a window the tests reject.
    """
    n, m, _ = inputs.shape
    boxes, centres = inputs.boxes.view(n * m, 4), state.gt_centres.view(n * m, 2)
    wh = boxes[:, 2:] - boxes[:, :2]
    radius = d_max_sq.clamp(min=0).sqrt()
    # lower_negated(boxes) and lower_negated(centres), in the one cat.
    return torch.cat(
        (-boxes[:, :2], boxes[:, 2:], -centres, centres, d_max_sq[:, None], radius[:, None],
         wh[:, :1] * wh[:, 1:]), dim=1,
    )  # fmt: skip


def _candidate_iou(pr: Tensor, gt: Tensor) -> Tensor:
    """``(P,)`` IoU of ``(P, 9)`` prior rows with their GT's ``(P, 11)`` rows.

    aligned_iou's float operations in its order (on negated lower corners, which round
    alike), so the values are bit-identical to the ATSS pass's, less the clamp of the
    overlap at 0: a no-op on the pairs kept, whose prior centre lies inside the GT.
    """
    corners = torch.minimum(pr[:, :4], gt[:, :4])  # (-x_lo, -y_lo, x_hi, y_hi) of the overlap
    wh = corners[:, 2:] + corners[:, :2]
    inter = wh[:, 0] * wh[:, 1]
    return inter / (pr[:, 8] + gt[:, 10] - inter).clamp_(min=EPS)


def _step3_tests(pr: Tensor, gt: Tensor, owner: Tensor) -> tuple[Tensor, Tensor]:
    """``(P,)`` squared centre distance and SPEC §4 step 3 (free, inside, within d_max) of
    pairs with ``(P, 9)`` prior rows, ``(P, 11)`` GT rows and ``(P,)`` prior owners.

    centre_distance_sq's and centre_inside's float operations: bit-identical to ATSS.
    """
    delta = pr[:, 6:8] - gt[:, 6:8]
    delta.mul_(delta)
    dist_sq = delta[:, 0] + delta[:, 1]
    inside = (gt[:, :4] - pr[:, 4:8]).amin(1) > INSIDE_EPS  # margins (x-x1, y-y1, x2-x, y2-y)
    return dist_sq, (owner < 0) & (dist_sq <= gt[:, 8]) & inside


def _extra_candidates(
    inputs: AssignInputs,
    state: AtssState,
    grid: PriorGrid | None,
    rows: Tensor,
    pred_boxes: Tensor | None,
    num_extra: int,
    min_iou: float,
) -> tuple[Tensor, ...]:
    """SPEC §4 steps 3–4 for a superset of the extra candidates, ``(P,)`` each: gid, flat
    prior index, prior IoU, rank score and keep (whether it is an extra candidate; None:
    all are); plus ``(N·M,)`` has_pos, whether ATSS gave the GT a positive."""
    n, m, _ = inputs.shape
    # Levels are skipped for many GTs only: the floor costs ~20 small kernels; and for the
    # prior-IoU rank only, which is bounded by the prior's size.
    floor = (
        pred_boxes is None and grid is not None and grid.prior_wh is not None
        and n * m >= PRUNE_MIN_GTS
    )  # fmt: skip
    d_max_sq, has_pos, rank_floor = _d_max(state, m, num_extra, floor, min_iou)
    table = _gt_table(inputs, state, d_max_sq)
    gid, prior, flat = _pairs(inputs, state, grid, table, rank_floor)
    # One gather per pair of each table fetches everything the tests and the rank need.
    gt = table.index_select(0, gid)  # (P, 11)
    pr = rows.index_select(0, prior)  # (P, 9)
    dist_sq, tests = _step3_tests(pr, gt, state.best_gt.index_select(0, flat))
    keep: Tensor | None = tests
    if grid is None:
        # The dense test's pairs fill the fallback radius, not the GT: most are rejected,
        # so compact them before the IoU.
        idx = keep.nonzero().squeeze(1)
        gid, flat, gt, pr, dist_sq = (t.index_select(0, idx) for t in (gid, flat, gt, pr, dist_sq))
        keep = None
    # The windows' pairs are mostly kept: IoU and rank of every pair, no compaction (the
    # ranking leaves the others out; the few rejected cost less than a round of gathers).
    iou = _candidate_iou(pr, gt)
    if min_iou > 0:  # the quality gate (module doc); GTs ATSS left empty are exempt
        gate = (iou >= min_iou) | ~has_pos.index_select(0, gid)
        keep = gate if keep is None else keep & gate
    ranked = iou
    if pred_boxes is not None:
        gt_boxes = inputs.boxes.view(n * m, 4).index_select(0, gid)
        ranked = aligned_iou(pred_boxes.view(-1, 4).index_select(0, flat), gt_boxes)
        ranked = torch.nan_to_num(ranked, nan=0.0)
    score = _rank_score(ranked, dist_sq.sqrt(), gt[:, 9])
    return gid, flat, iou, score, keep, has_pos


def _resolve(flat: Tensor, gid: Tensor, score: Tensor, has_pos: Tensor, m: int) -> Tensor:
    """Positions of the picks that keep their prior when several GTs picked it (module doc)."""
    # One exact int64 key per pick: (GT without ATSS positives, score, -GT index).
    low = (1 << 31) - 1
    key = (~has_pos.index_select(0, gid)).to(torch.int64) << 62
    key |= score.view(torch.int32).to(torch.int64) << 31
    key |= low - gid % m
    # Best key first, then grouped by prior (stable): the first pick of each prior wins.
    # Two sorts of the few picks instead of a scatter into an (N·R,) buffer.
    order = torch.argsort(key, descending=True)
    order = order.index_select(0, torch.argsort(flat.index_select(0, order), stable=True))
    sorted_flat = flat.index_select(0, order)
    first = torch.ones_like(sorted_flat, dtype=torch.bool)
    first[1:] = sorted_flat[1:] != sorted_flat[:-1]
    return order.index_select(0, first.nonzero().squeeze(1))


def _extras(
    inputs: AssignInputs,
    state: AtssState,
    grid: PriorGrid | None,
    rows: Tensor,
    pred_boxes: Tensor | None,
    num_extra: int,
    min_iou: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The extra positives: ``(E,)`` flat prior index ``n·R + r``, GT index and prior IoU.

    ``grid``: the priors' grid (None: the dense test's pairs); ``rows``: their
    ``(R, 9)`` :func:`grid.prior_table`.
    """
    m = inputs.shape[1]
    extra = _extra_candidates(inputs, state, grid, rows, pred_boxes, num_extra, min_iou)
    gid, flat, iou, score, keep, has_pos = extra
    pick = top_per_group(gid, score, num_extra, keep)
    if m == 1:  # with one GT per image no prior is picked twice
        return flat.index_select(0, pick), gid.new_zeros(pick.shape), iou.index_select(0, pick)
    gid, flat, iou, score = (t.index_select(0, pick) for t in (gid, flat, iou, score))
    won = _resolve(flat, gid, score, has_pos, m)
    gid, flat, iou = (t.index_select(0, won) for t in (gid, flat, iou))
    return flat, gid % m, iou


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
    min_extra_iou: float = 0.0,
    chunk_size: int | None = None,
    search: str = "grid",
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
        min_extra_iou: quality gate outside SPEC (module doc); 0 (the default) is SPEC.
        chunk_size: GTs per chunk; None keeps each ``(N, G, R)`` temporary ≤ 4M elements.
        search: how the extra candidates are found: ``"grid"`` (window search when the
            priors form one grid per level, see grid.py; the dense test otherwise) or
            ``"dense"`` (always the dense test). Both give the same result.
    Returns:
        :class:`AssignResult` with ``(N, R)`` tensors; ``max_ious`` is the prior's IoU.
    """
    inputs = prepare_inputs(priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes)
    n, m, r = inputs.shape
    check_levels(num_level_priors, r, topk)
    if num_extra < 0:
        raise ValueError(f"num_extra must be >= 0, got {num_extra}")
    if not 0.0 <= min_extra_iou <= 1.0:
        raise ValueError(f"min_extra_iou must lie in [0, 1], got {min_extra_iou}")
    if search not in ("grid", "dense"):
        raise ValueError(f"search must be 'grid' or 'dense', got {search!r}")
    if pred_boxes is not None and tuple(pred_boxes.shape) != (n, r, 4):
        raise ValueError(f"pred_boxes must have shape {(n, r, 4)}, got {tuple(pred_boxes.shape)}")
    extra = num_extra > 0 and m > 0 and r > 0
    grid = rows = None
    if extra:  # both cached per priors tensor (grid.py)
        grid, rows = prior_info(priors, num_level_priors)
        grid = grid if search == "grid" else None
    state = atss_core(
        inputs, num_level_priors, topk, chunk_size, collect=extra, dense_pairs=grid is None
    )
    gt_inds, ious = state.best_gt, state.best_iou
    if extra:
        pred = None if pred_boxes is None else pred_boxes.detach().float()
        with torch.inference_mode():  # as in atss_core: cheaper small kernels
            extras = _extras(inputs, state, grid, rows, pred, num_extra, min_extra_iou)
        flat, extra_gt, extra_iou = extras
        gt_inds.index_put_((flat,), extra_gt)  # the state's own (normal) buffers
        ious.index_put_((flat,), extra_iou)
    return finalize(inputs, gt_inds.view(n, r), ious.view(n, r), num_classes, chunk_size=chunk_size)
