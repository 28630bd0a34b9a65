"""Max-IoU assignment (RetinaNet) and the input handling every assigner shares.

Rules of :func:`max_iou_assign`, per prior ``r`` of image ``n``:

* ``IoU ≥ pos_iou_thr`` (0.5) with its best GT ⇒ positive for that GT;
  ``IoU < neg_iou_thr`` (0.4) ⇒ background; in between ⇒ ignore (-1).
* Low-quality matches (as mmdet's RetinaNet, ``gt_max_assign_all``): every prior
  whose IoU with GT ``g`` equals ``g``'s best IoU over all priors becomes positive for
  ``g`` when that best IoU is ``> 0`` and ``≥ min_pos_iou`` (default 0.0). The ``> 0``
  guard differs from mmdet on purpose: a GT overlapping no prior would otherwise make
  every prior with IoU 0 a positive. A low-quality match overrides the prior's
  ordinary match; a prior that is the best of several GTs goes to the one of highest
  IoU with it (lowest GT index on ties) instead of mmdet's "last GT wins".
* Ties between GTs are always broken towards the lowest GT index, so the result is
  deterministic on every device.

Shared by all assigners (see :func:`prepare_inputs` and :func:`finalize`):

* GTs with ``gt_mask`` False are padding. Valid non-crowd GTs with zero area or
  non-finite coordinates are ignored with one warning per call and counted in
  ``num_unmatched_gts``.
* Crowd boxes are never matched; a prior that is not positive and whose intersection
  with a crowd box covers ``≥ CROWD_IOF_THR`` (0.5) of the prior's own area (IoF, the
  ``ignore_iof_thr`` convention of mmdet) is ignored instead of background.
* GTs are processed in chunks so that every ``(N, G, R)`` temporary holds at most
  ``CHUNK_ELEMS`` (4M) elements, whatever the number of GTs (peak memory measured in
  docs/bench_assigners.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from hcral.assigners.result import AssignResult
from hcral.boxes import aligned_iou, box_area

__all__ = ["CHUNK_ELEMS", "CROWD_IOF_THR", "max_iou_assign"]

CROWD_IOF_THR = 0.5
CHUNK_ELEMS = 1 << 22


@dataclass
class AssignInputs:
    """Checked, float32 inputs of an assignment.

    Attributes:
        priors: ``(R, 4)`` float32 xyxy.
        boxes: ``(N, M, 4)`` float32; rows that are not ``active`` are zeroed so that
            padding garbage (NaN) never reaches the arithmetic.
        labels: ``(N, M)`` int64.
        active: ``(N, M)`` bool, GTs that may receive positives.
        counted: ``(N, M)`` bool, valid non-crowd GTs (unmatched ones are counted).
        crowd: ``(N, M)`` bool, valid crowd boxes.
    """

    priors: Tensor
    boxes: Tensor
    labels: Tensor
    active: Tensor
    counted: Tensor
    crowd: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, M, R)``."""
        n, m = self.labels.shape
        return n, m, self.priors.shape[0]


def _check_shapes(
    priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor, gt_crowd: Tensor | None
) -> None:
    if priors.dim() != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must have shape (R, 4), got {tuple(priors.shape)}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must have shape (N, M, 4), got {tuple(gt_boxes.shape)}")
    nm = tuple(gt_boxes.shape[:2])
    named = {"gt_labels": gt_labels, "gt_mask": gt_mask, "gt_crowd": gt_crowd}
    for name, t in named.items():
        if t is not None and tuple(t.shape) != nm:
            raise ValueError(f"{name} must have shape {nm} (N, M), got {tuple(t.shape)}")
    for name, t in {"gt_mask": gt_mask, "gt_crowd": gt_crowd}.items():
        if t is not None and t.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {t.dtype}")
    if gt_labels.dtype.is_floating_point or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels must be an integer tensor, got {gt_labels.dtype}")
    for name, t in {"gt_boxes": gt_boxes, "gt_labels": gt_labels, "gt_mask": gt_mask}.items():
        if t.device != priors.device:
            raise ValueError(f"{name} is on {t.device} but priors are on {priors.device}")


def prepare_inputs(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    gt_crowd: Tensor | None,
    num_classes: int,
) -> AssignInputs:
    """Check shapes and labels, drop degenerate GTs with one warning, upcast to float32.

    Raises:
        ValueError: naming the argument, for wrong shapes, dtypes, devices, a
            ``num_classes < 1`` or a valid non-crowd label outside ``0..C-1``.
    """
    _check_shapes(priors, gt_boxes, gt_labels, gt_mask, gt_crowd)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    crowd = gt_mask & gt_crowd if gt_crowd is not None else torch.zeros_like(gt_mask)
    counted = gt_mask & ~crowd
    labels = gt_labels.long()
    bad_label = counted & ((labels < 0) | (labels >= num_classes))
    if bad_label.any():
        value = labels[bad_label][0].item()
        raise ValueError(f"gt_labels must lie in 0..{num_classes - 1}, got {value}")
    boxes = gt_boxes.float()
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    usable = torch.isfinite(boxes).all(-1) & (w > 0) & (h > 0)
    num_bad = int((counted & ~usable).sum())
    if num_bad:
        warnings.warn(
            f"assigner: ignored {num_bad} ground-truth box(es) with zero area or non-finite "
            "coordinates; they are counted in num_unmatched_gts",
            stacklevel=3,
        )
    boxes = torch.where((gt_mask & usable)[..., None], boxes, torch.zeros_like(boxes))
    return AssignInputs(
        priors=priors.float(),
        boxes=boxes,
        labels=labels,
        active=counted & usable,
        counted=counted,
        crowd=crowd & usable,
    )


def gt_chunks(n: int, m: int, r: int, chunk_size: int | None) -> Iterator[slice]:
    """Slices of the GT axis; by default each ``(N, G, R)`` temporary ≤ CHUNK_ELEMS."""
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMS // max(1, n * r))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, m, chunk_size):
        yield slice(start, min(m, start + chunk_size))


def merge_claims(
    best_val: Tensor, best_gt: Tensor, flat_idx: Tensor, val: Tensor, gt_idx: Tensor
) -> None:
    """Give each prior to its claim of highest value, lowest GT index on ties (in place).

    Claims merged by earlier calls must come from lower GT indices: a later claim only
    wins with a strictly higher value.

    Args:
        best_val: ``(N·R,)`` float, running best claim value (``-inf`` = unclaimed).
        best_gt: ``(N·R,)`` int64, running winner GT index (``-1`` = unclaimed).
        flat_idx: ``(K,)`` int64, ``n·R + r`` of each claim.
        val: ``(K,)`` float, claim values (finite).
        gt_idx: ``(K,)`` int64, GT index of each claim.
    """
    chunk_val = torch.full_like(best_val, -math.inf).scatter_reduce_(0, flat_idx, val, "amax")
    winner = val == chunk_val[flat_idx]
    big = torch.iinfo(torch.int64).max
    cand_gt = torch.where(winner, gt_idx, torch.full_like(gt_idx, big))
    chunk_gt = torch.full_like(best_gt, big).scatter_reduce_(0, flat_idx, cand_gt, "amin")
    update = chunk_val > best_val
    best_val.copy_(torch.where(update, chunk_val, best_val))
    best_gt.copy_(torch.where(update, chunk_gt, best_gt))


def _crowd_ignore(inputs: AssignInputs, chunk_size: int | None) -> Tensor:
    """``(N, R)`` bool: priors covered (IoF ≥ CROWD_IOF_THR) by one of their image's crowd boxes."""
    n, _, r = inputs.shape
    # Gather the (few) crowd boxes of each image to the front so the loop runs over them only.
    num_crowd = int(inputs.crowd.sum(1).max()) if inputs.crowd.numel() else 0
    out = torch.zeros(n, r, dtype=torch.bool, device=inputs.priors.device)
    if num_crowd == 0:
        return out
    order = torch.argsort((~inputs.crowd).to(torch.uint8), dim=1, stable=True)[:, :num_crowd]
    crowd_boxes = inputs.boxes.gather(1, order[..., None].expand(-1, -1, 4))
    is_crowd = inputs.crowd.gather(1, order)
    prior_area = box_area(inputs.priors).clamp(min=1e-7)  # (R,)
    pr = inputs.priors
    for sl in gt_chunks(n, num_crowd, r, chunk_size):
        cb = crowd_boxes[:, sl, None, :]  # (N, G, 1, 4)
        inter = box_area(
            torch.cat(
                (torch.maximum(pr[:, :2], cb[..., :2]), torch.minimum(pr[:, 2:], cb[..., 2:])),
                dim=-1,
            )
        )
        covered = (inter / prior_area >= CROWD_IOF_THR) & is_crowd[:, sl, None]
        out |= covered.any(1)
    return out


def finalize(
    inputs: AssignInputs,
    gt_inds: Tensor,
    max_ious: Tensor,
    num_classes: int,
    ignore: Tensor | None = None,
    chunk_size: int | None = None,
) -> AssignResult:
    """Labels, crowd ignores and unmatched counts from per-prior GT indices.

    Args:
        inputs: the prepared inputs.
        gt_inds: ``(N, R)`` int64 assigned GT or -1.
        max_ious: ``(N, R)`` float IoU with the assigned GT (anything where ``gt_inds`` is -1).
        num_classes: C.
        ignore: optional ``(N, R)`` bool, non-positive priors to label -1.
        chunk_size: GT chunk for the crowd test.
    Returns:
        The :class:`AssignResult`.
    """
    n, m, r = inputs.shape
    pos = gt_inds >= 0
    # Column M holds the background class, so the gather also works for M = 0.
    table = torch.cat((inputs.labels, inputs.labels.new_full((n, 1), num_classes)), dim=1)
    labels = table.gather(1, torch.where(pos, gt_inds, m))
    ignore = (
        _crowd_ignore(inputs, chunk_size)
        if ignore is None
        else ignore | _crowd_ignore(inputs, chunk_size)
    )
    labels = torch.where(ignore & ~pos, torch.full_like(labels, -1), labels)
    hits = torch.zeros(n, m + 1, dtype=torch.int64, device=gt_inds.device)
    hits.scatter_add_(1, gt_inds + 1, torch.ones_like(gt_inds))
    unmatched = (inputs.counted & (hits[:, 1:] == 0)).sum(1)
    return AssignResult(
        gt_inds=gt_inds,
        labels=labels,
        max_ious=torch.where(pos, max_ious, torch.zeros_like(max_ious)).float(),
        num_unmatched_gts=unmatched,
    )


def _max_iou_chunk(
    inputs: AssignInputs, sl: slice, min_pos_iou: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-prior best GT of one GT chunk, plain and low-quality, each ``(N, R)``."""
    boxes = inputs.boxes[:, sl, None, :]  # (N, G, 1, 4)
    active = inputs.active[:, sl, None]
    iou = aligned_iou(inputs.priors, boxes).masked_fill(~active, -math.inf)  # (N, G, R)
    best = iou.argmax(1, keepdim=True)  # first index on ties (documented by torch)
    best_val = iou.gather(1, best).squeeze(1)
    gt_max = iou.amax(2, keepdim=True)  # (N, G, 1)
    low_q = (iou == gt_max) & (gt_max > 0) & (gt_max >= min_pos_iou)
    lq_iou = iou.masked_fill(~low_q, -math.inf)
    lq = lq_iou.argmax(1, keepdim=True)
    lq_val = lq_iou.gather(1, lq).squeeze(1)
    return best_val, best.squeeze(1) + sl.start, lq_val, lq.squeeze(1) + sl.start


@torch.no_grad()
def max_iou_assign(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    gt_crowd: Tensor | None,
    num_classes: int,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.0,
    chunk_size: int | None = None,
) -> AssignResult:
    """RetinaNet assignment by IoU thresholds with low-quality matches (rules: module doc).

    Args:
        priors: ``(R, 4)`` xyxy anchors shared by the batch.
        gt_boxes: ``(N, M, 4)`` xyxy, padded.
        gt_labels: ``(N, M)`` int64 classes ``0..C-1``.
        gt_mask: ``(N, M)`` bool, real (non-padding) GTs.
        gt_crowd: ``(N, M)`` bool crowd flags, or None for none.
        num_classes: C.
        pos_iou_thr: IoU at or above which a prior is positive.
        neg_iou_thr: IoU below which a prior is background.
        min_pos_iou: smallest best-IoU for which a GT takes low-quality matches.
        chunk_size: GTs per chunk; None keeps each ``(N, G, R)`` temporary ≤ 4M elements.
    Returns:
        :class:`AssignResult` with ``(N, R)`` tensors.
    """
    if not 0 <= neg_iou_thr <= pos_iou_thr:
        raise ValueError(
            f"need 0 <= neg_iou_thr <= pos_iou_thr, got neg_iou_thr={neg_iou_thr}, "
            f"pos_iou_thr={pos_iou_thr}"
        )
    inputs = prepare_inputs(priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes)
    n, m, r = inputs.shape
    dev = inputs.priors.device
    best = torch.full((n, r), -math.inf, device=dev)
    best_gt = torch.full((n, r), -1, dtype=torch.int64, device=dev)
    lq = best.clone()
    lq_gt = best_gt.clone()
    for sl in gt_chunks(n, m, r, chunk_size):
        b, b_gt, q, q_gt = _max_iou_chunk(inputs, sl, min_pos_iou)
        # Strict ">" keeps the earlier chunk, i.e. the lower GT index, on ties.
        take, take_q = b > best, q > lq
        best, best_gt = torch.where(take, b, best), torch.where(take, b_gt, best_gt)
        lq, lq_gt = torch.where(take_q, q, lq), torch.where(take_q, q_gt, lq_gt)
    has_lq = lq > -math.inf
    ordinary = best >= pos_iou_thr
    gt_inds = torch.where(has_lq, lq_gt, torch.where(ordinary, best_gt, -1))
    ious = torch.where(has_lq, lq, best)
    ignore = (best >= neg_iou_thr) & ~ordinary
    return finalize(inputs, gt_inds, ious, num_classes, ignore=ignore, chunk_size=chunk_size)
